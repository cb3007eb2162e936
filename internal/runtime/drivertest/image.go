package drivertest

import (
	"net/url"
	"testing"
)

// runFromImage: what the image put under /run is there for the app, as
// under runc, and a directory there owned by a non-root user stays its:
// Debian's postgres writes its lock file into /run/postgresql as postgres.
func (s *suite) runFromImage(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	spec.Process.User = "app"
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	if code, body := get(t, spec, "GET", "/fs?path="+url.QueryEscape(runMarker)); code != 200 || body != runMarkerContent {
		t.Errorf("the machine reads the image's %s as %d %q, want %q", runMarker, code, body, runMarkerContent)
	}
	lock := runAppDir + "/.s.PGSQL.5432.lock"
	if code, body := get(t, spec, "PUT", "/fs?path="+url.QueryEscape(lock)); code != 200 {
		t.Errorf("user app cannot write %s in the image's %s (app's own): %d %s", lock, runAppDir, code, body)
	}
	if code, body := get(t, spec, "GET", "/fs?path="+url.QueryEscape(lock)); code != 200 || body != "written" {
		t.Errorf("reading back %s: %d %q", lock, code, body)
	}
}

// lowPortAsNonRoot: a server running as a non-root user binds port 80, as
// nginx's or postgres's images expect of a container.
func (s *suite) lowPortAsNonRoot(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	spec.Process.User = "app"
	spec.Process.Env[0] = "PORT=80"
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	if in := info(t, spec); in.UID != 1000 || in.Message != "hello from "+spec.ID {
		t.Errorf("on port 80 the machine answers uid %d, message %q; want uid 1000 (app), %q", in.UID, in.Message, "hello from "+spec.ID)
	}
	waitLog(t, d, spec.ID, "stdout", "listening on :80")
}
