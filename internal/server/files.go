package server

import (
	"encoding/base64"
	"github.com/perchhq/perch/internal/api"
	"net/http"
	"path"
	"strings"
)

// maxFilesBytes bounds the decoded raw values of a machine's files: the
// config lives in the store and travels to hosts in every watch.
const maxFilesBytes = 256 << 10

// validateFiles checks config.files: an absolute clean path outside the
// kernel's filesystems, exactly one source, base64 that decodes, and a
// mode of permission bits.
func validateFiles(files []api.File) error {
	total := 0
	seen := map[string]bool{}
	for i, f := range files {
		p := f.GuestPath
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			return errf(http.StatusBadRequest, "config.files[%d].guest_path %q must be an absolute, clean path to a file, e.g. /etc/app/config.json", i, p)
		}
		for _, bad := range []string{"/proc", "/sys", "/dev"} {
			if p == bad || strings.HasPrefix(p, bad+"/") {
				return errf(http.StatusBadRequest, "config.files[%d].guest_path %q is under %s, which the kernel provides; write the file elsewhere", i, p, bad)
			}
		}
		if seen[p] {
			return errf(http.StatusBadRequest, "config.files[%d].guest_path %q is given twice; give each file once", i, p)
		}
		seen[p] = true
		if (f.RawValue == nil) == (f.SecretName == nil) {
			return errf(http.StatusBadRequest, "config.files[%d] (%s) needs exactly one of raw_value (base64) and secret_name", i, p)
		}
		if f.RawValue != nil {
			b, err := base64.StdEncoding.DecodeString(*f.RawValue)
			if err != nil {
				return errf(http.StatusBadRequest, "config.files[%d].raw_value (%s) is not base64: %v; encode the content with base64", i, p, err)
			}
			total += len(b)
		}
		if f.Mode&^0o7777 != 0 {
			return errf(http.StatusBadRequest, "config.files[%d].mode %#o has bits beyond permissions (0-07777); send e.g. 420 (0644)", i, f.Mode)
		}
	}
	if total > maxFilesBytes {
		return errf(http.StatusBadRequest, "config.files hold %d bytes; at most %d (256 KiB) fit in a machine's config: bake larger files into the image", total, maxFilesBytes)
	}
	return nil
}
