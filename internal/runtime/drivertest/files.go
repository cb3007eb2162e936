package drivertest

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

// files: Spec.Files (Fly's config.files) are in the machine's root when
// it starts, in directories made for them, still there after a restart,
// and never in the shared image.
func (s *suite) files(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	spec.Files = []runtime.File{
		{Path: "/etc/perch-files/app.conf", Data: []byte("mode = production\n"), Mode: 0o600},
		{Path: "/run-file.txt", Data: []byte("raw value")},
	}
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	check := func(when string) {
		t.Helper()
		for p, want := range map[string]string{"/etc/perch-files/app.conf": "mode = production\n", "/run-file.txt": "raw value"} {
			if code, body := get(t, spec, "GET", "/fs?path="+p); code != 200 || body != want {
				t.Errorf("%s: the machine reads %s as %d %q, want %q", when, p, code, body, want)
			}
		}
	}
	check("first start")
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	s.start(t, d, spec.ID)
	check("after a restart")
	if _, err := os.Stat(filepath.Join(s.env.Rootfs, "etc/perch-files")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the machine's files reached the shared image rootfs (stat: %v)", err)
	}
}
