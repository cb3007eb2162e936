package drivertest

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

func (s *suite) resources(t *testing.T) {
	if s.env.MemoryLimit == nil {
		t.Skip("the driver's test gives no way to read a machine's memory limit")
	}
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	// Not the suite's usual 128 MiB, and enough for a VM's kernel.
	spec.MemoryMB = 192
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	if got, want := s.env.MemoryLimit(t, spec.ID), int64(192<<20); got != want {
		t.Errorf("memory limit = %d bytes, want %d (192 MiB)", got, want)
	}
}

func (s *suite) writableLayerIsPrivate(t *testing.T) {
	d := s.newDriver(t)
	a, b := s.spec(t, []string{"serve"}), s.spec(t, []string{"serve"})
	for _, spec := range []runtime.Spec{a, b} {
		s.create(t, d, spec)
		s.start(t, d, spec.ID)
	}
	if code, body := get(t, a, "PUT", "/files/note"); code != 200 {
		t.Fatalf("write in machine a: %d %s", code, body)
	}
	if code, body := get(t, a, "GET", "/files/note"); code != 200 || body != "written" {
		t.Errorf("machine a reads back %d %q", code, body)
	}
	if code, _ := get(t, b, "GET", "/files/note"); code != 404 {
		t.Errorf("machine b sees machine a's file (status %d)", code)
	}
	if _, err := os.Stat(filepath.Join(s.env.Rootfs, "tmp", "note")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("machine a's write reached the shared image rootfs (stat: %v)", err)
	}
}

func (s *suite) survivesDriverRestart(t *testing.T) {
	first := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	s.create(t, first, spec)
	s.start(t, first, spec.ID)
	before, err := first.State(ctx(t), spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	first = nil // the agent is gone; the machine is not

	d := s.newDriver(t)
	st, err := d.State(ctx(t), spec.ID)
	if err != nil || st.Status != runtime.StatusRunning || st.Pid != before.Pid {
		t.Fatalf("new driver sees %+v, %v; want running with pid %d", st, err, before.Pid)
	}
	if ids, err := d.List(ctx(t)); err != nil || !slices.Contains(ids, spec.ID) {
		t.Fatalf("new driver List() = %v, %v; want it to have %s", ids, err, spec.ID)
	}
	info(t, spec)
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusExited || st.ExitCode != 0 {
		t.Fatalf("State after Stop by the new driver = %+v, %v; want exited with code 0", st, err)
	}
	if err := d.Destroy(ctx(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	if s.env.Leftovers != nil {
		if left := s.env.Leftovers(t, spec.ID); len(left) > 0 {
			t.Errorf("Destroy by the new driver left behind: %v", left)
		}
	}
}

func (s *suite) createReplaces(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	info(t, spec)

	spec.Process.Env = append(spec.Process.Env, "MESSAGE=replaced")
	s.create(t, d, spec)
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusCreated {
		t.Fatalf("State after replacing Create = %+v, %v; want created", st, err)
	}
	s.start(t, d, spec.ID)
	if in := info(t, spec); in.Message != "replaced" {
		t.Errorf("replaced machine says %q, want %q", in.Message, "replaced")
	}
}

func (s *suite) unknownMachine(t *testing.T) {
	d := s.newDriver(t)
	const id = "dtunknown"
	if _, err := d.State(ctx(t), id); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("State: err = %v, want ErrNotFound", err)
	}
	if err := d.Start(ctx(t), id); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Start: err = %v, want ErrNotFound", err)
	}
	if err := d.Stop(ctx(t), id, syscall.SIGTERM, time.Second); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Stop: err = %v, want ErrNotFound", err)
	}
	if _, err := d.Wait(ctx(t), id); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Wait: err = %v, want ErrNotFound", err)
	}
	if err := d.Destroy(ctx(t), id); err != nil {
		t.Errorf("Destroy: %v", err)
	}
}
