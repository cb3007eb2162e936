package api

import (
	"fmt"
	"strings"
)

// Static is a directory of a machine's image that the edges serve
// themselves, as Fly's statics: a request whose path starts with URLPrefix
// is answered from GuestPath in the image of the app's release, and never
// reaches a machine when the file is there.
type Static struct {
	GuestPath string `json:"guest_path"`
	URLPrefix string `json:"url_prefix"`
	// TigrisBucket is Fly's bucket-backed statics; Perch refuses it.
	TigrisBucket string `json:"tigris_bucket,omitempty"`
	// IndexDocument is served for a directory ("index.html" if empty).
	IndexDocument string `json:"index_document,omitempty"`
}

// Check says what is wrong with a static, nil if nothing: a bucket
// (Perch serves statics only from the image), a guest_path that is not
// an absolute path inside the image, a url_prefix that is not a path.
func (s Static) Check() error {
	if s.TigrisBucket != "" {
		return fmt.Errorf("tigris_bucket %q: statics from a bucket are not supported, Perch serves statics from the app's image; copy the files into the image and set guest_path instead", s.TigrisBucket)
	}
	if !strings.HasPrefix(s.GuestPath, "/") || hasDotDot(s.GuestPath) || strings.ContainsRune(s.GuestPath, 0) {
		return fmt.Errorf("guest_path %q must be an absolute directory inside the image, without \"..\", e.g. \"/app/public\"", s.GuestPath)
	}
	if !strings.HasPrefix(s.URLPrefix, "/") || hasDotDot(s.URLPrefix) || strings.ContainsAny(s.URLPrefix, "?#\x00") {
		return fmt.Errorf("url_prefix %q must be a URL path starting with \"/\", without \"..\", \"?\" or \"#\", e.g. \"/static\"", s.URLPrefix)
	}
	if strings.ContainsAny(s.IndexDocument, "/\x00") || s.IndexDocument == "." || s.IndexDocument == ".." {
		return fmt.Errorf("index_document %q must be a file name, e.g. \"index.html\"", s.IndexDocument)
	}
	return nil
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}
