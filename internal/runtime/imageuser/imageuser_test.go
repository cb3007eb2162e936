package imageuser

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestResolveUser(t *testing.T) {
	rootfs := t.TempDir()
	os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
	os.WriteFile(filepath.Join(rootfs, "etc/passwd"), []byte(
		"root:x:0:0:root:/root:/bin/sh\n# comment\nweb:x:33:33:www:/var/www:/usr/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc/group"), []byte(
		"root:x:0:\nweb:x:33:\nlogs:x:4:web,other\nssl:x:101:web\n"), 0o644)

	for _, tc := range []struct {
		user string
		want User
	}{
		{"", User{UID: 0, GID: 0, Home: "/root"}},
		{"root", User{UID: 0, GID: 0, Home: "/root"}},
		{"web", User{UID: 33, GID: 33, Extra: []uint32{4, 101}, Home: "/var/www"}},
		{"web:logs", User{UID: 33, GID: 4, Extra: []uint32{4, 101}, Home: "/var/www"}},
		{"33", User{UID: 33, GID: 33, Extra: []uint32{4, 101}, Home: "/var/www"}},
		{"33:7", User{UID: 33, GID: 7, Extra: []uint32{4, 101}, Home: "/var/www"}},
		{"1000", User{UID: 1000, GID: 0, Home: "/"}},
		{"1000:1000", User{UID: 1000, GID: 1000, Home: "/"}},
	} {
		got, err := Resolve([]string{rootfs}, tc.user)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.user, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("Resolve(%q) (-want +got):\n%s", tc.user, diff)
		}
	}
	for _, user := range []string{"nobody", "web:nogroup"} {
		if _, err := Resolve([]string{rootfs}, user); err == nil || !strings.Contains(err.Error(), "not in the image") {
			t.Errorf("Resolve(%q): err = %v, want one saying it is not in the image", user, err)
		}
	}
}

func TestResolveUserWithoutEtc(t *testing.T) {
	got, err := Resolve([]string{t.TempDir()}, "")
	if err != nil || got.UID != 0 || got.GID != 0 {
		t.Fatalf("Resolve in an image without /etc = %+v, %v; want root", got, err)
	}
	if _, err := Resolve([]string{t.TempDir()}, "app"); err == nil {
		t.Fatal("a user name resolved in an image without /etc/passwd")
	}
}

// An image's symlink must not make the driver read the host's files.
func TestResolveUserStaysInRootfs(t *testing.T) {
	rootfs := t.TempDir()
	os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(rootfs, "etc/passwd"))
	if u, err := Resolve([]string{rootfs}, "root"); err == nil {
		t.Fatalf("resolved root through a symlink to the host's /etc/passwd: %+v", u)
	}
}
