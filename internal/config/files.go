package config

import (
	"encoding/base64"
	"os"
	pathpkg "path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// File is one [[files]] of fly.toml: a file written into the machines of
// Processes (every group when empty) before they start, from exactly one
// of RawValue (the content itself: flyctl base64-encodes it for the
// machine config, unlike the API's raw_value), LocalPath (a file next to
// the config, read when the config is) or SecretName (an app secret).
type File struct {
	GuestPath  string
	RawValue   string // the content; LocalPath's once read
	LocalPath  string
	SecretName string
	Processes  []string
}

// maxFileBytes bounds one file (the control plane takes 256 KiB in all).
const maxFileBytes = 256 << 10

func (d *decoder) files(top *section) []File {
	var out []File
	for _, s := range top.subs("files") {
		var f File
		var p path
		var has bool
		f.GuestPath, p, has = s.str("guest_path")
		switch {
		case !has:
			d.errorf(s.p, "[[files]] needs guest_path, where machines see the file, e.g. guest_path = \"/etc/app/config.json\"")
		case !pathpkg.IsAbs(f.GuestPath) || pathpkg.Clean(f.GuestPath) != f.GuestPath || f.GuestPath == "/":
			d.errorf(p, "guest_path %q must be an absolute, clean path to a file, e.g. \"/etc/app/config.json\"", f.GuestPath)
		}
		raw, rawPath, hasRaw := s.str("raw_value")
		local, localPath, hasLocal := s.str("local_path")
		f.SecretName, _, _ = s.str("secret_name")
		f.Processes, _, _ = s.strs("processes", `["app"]`)
		s.done()
		n := 0
		for _, b := range []bool{hasRaw, hasLocal, f.SecretName != ""} {
			if b {
				n++
			}
		}
		if n != 1 {
			d.errorf(s.p, "[[files]] %s needs exactly one of raw_value (the content), local_path or secret_name", f.GuestPath)
			continue
		}
		switch {
		case hasRaw:
			if len(raw) > maxFileBytes {
				d.errorf(rawPath, "raw_value holds %d bytes; at most %d (256 KiB): bake larger files into the image", len(raw), maxFileBytes)
				continue
			}
			f.RawValue = raw
		case hasLocal:
			// Relative to the config file, as flyctl reads it from the
			// directory of fly.toml.
			full := local
			if !filepath.IsAbs(full) {
				full = filepath.Join(filepath.Dir(d.file), local)
			}
			b, err := os.ReadFile(full)
			if err != nil {
				d.errorf(localPath, "local_path %q cannot be read (%v); give a file relative to %s", local, strings.TrimPrefix(err.Error(), "open "+full+": "), filepath.Base(d.file))
				continue
			}
			if len(b) > maxFileBytes {
				d.errorf(localPath, "local_path %q is %d bytes; at most %d (256 KiB): bake larger files into the image", local, len(b), maxFileBytes)
				continue
			}
			f.LocalPath, f.RawValue = local, string(b)
		}
		out = append(out, f)
	}
	return out
}

// apiFiles are the machine config's files for a machine of group.
func (c *Config) apiFiles(group string) []api.File {
	var out []api.File
	for _, f := range c.Files {
		if len(f.Processes) > 0 && !slices.Contains(f.Processes, group) {
			continue
		}
		af := api.File{GuestPath: f.GuestPath}
		if f.SecretName != "" {
			name := f.SecretName
			af.SecretName = &name
		} else {
			raw := base64.StdEncoding.EncodeToString([]byte(f.RawValue))
			af.RawValue = &raw
		}
		out = append(out, af)
	}
	return out
}
