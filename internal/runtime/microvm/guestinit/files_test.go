package guestinit

import (
	"os"
	"path/filepath"
	"testing"
)

// The init writes config.files as the runc driver does: an image's
// symlinks resolve inside the machine's root (never to the init's own
// root outside it), a file or symlink there is replaced, missing
// directories are made, modes are kept.
func TestWriteFilesStayInRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files are owned by root")
	}
	root, outside := t.TempDir(), t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/lib/ssl"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(root, "etc/app.conf"), []byte("from the image"), 0o644))
	must(os.Symlink("/usr/lib/ssl", filepath.Join(root, "etc/ssl")))
	must(os.Symlink(outside, filepath.Join(root, "escape")))                       // absolute: the root's own /tmp/...
	must(os.Symlink("../../../../../..", filepath.Join(root, "up")))               // climbs no higher than the root
	must(os.Symlink(filepath.Join(outside, "f"), filepath.Join(root, "etc/link"))) // the file itself a symlink
	files := []File{
		{Path: "/etc/ssl/cert.pem", Data: []byte("cert"), Mode: 0o600},
		{Path: "/escape/x", Data: []byte("x")},
		{Path: "/up/y", Data: []byte("y")},
		{Path: "/etc/link", Data: []byte("z")},
		{Path: "/new/dir/conf", Data: []byte("c")},
		{Path: "/etc/app.conf", Data: []byte("from config.files")},
	}
	must(writeFiles(root, files))
	for p, want := range map[string]string{
		"usr/lib/ssl/cert.pem":          "cert",
		filepath.Join(outside[1:], "x"): "x",
		"y":                             "y",
		"etc/link":                      "z",
		"new/dir/conf":                  "c",
		"etc/app.conf":                  "from config.files",
	} {
		b, err := os.ReadFile(filepath.Join(root, p))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", p, b, err, want)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("files were written outside the root: %v", ents)
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc/link")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("etc/link: %v %v; want the symlink replaced by a file", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "usr/lib/ssl/cert.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "new/dir/conf")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("default mode: %v %v", fi, err)
	}
	// Written again on the next boot: the same result.
	must(writeFiles(root, files))
}
