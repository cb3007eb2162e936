package drivertest

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/perchhq/perch/internal/runtime"
)

func (s *suite) servesOnItsAddress(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	spec.Process.Cwd = "/srv"
	s.create(t, d, spec)
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusCreated {
		t.Fatalf("State after Create = %+v, %v; want created", st, err)
	}
	s.start(t, d, spec.ID)
	st, err := d.State(ctx(t), spec.ID)
	if err != nil || st.Status != runtime.StatusRunning || st.Pid <= 0 || st.StartedAt.IsZero() {
		t.Fatalf("State after Start = %+v, %v; want running with a pid and start time", st, err)
	}
	in := info(t, spec)
	if in.Message != "hello from "+spec.ID || in.Cwd != "/srv" || in.Hostname != spec.Hostname {
		t.Errorf("machine sees message %q, cwd %q, hostname %q; want %q, /srv, %q",
			in.Message, in.Cwd, in.Hostname, "hello from "+spec.ID, spec.Hostname)
	}
	if !strings.Contains(in.Hosts, spec.Net.Addr.Addr().String()+"\t"+spec.Hostname) {
		t.Errorf("/etc/hosts does not name the machine:\n%s", in.Hosts)
	}
	if in.Resolv != "" {
		t.Errorf("the machine has an /etc/resolv.conf though the image has none and Net.DNS is empty:\n%s", in.Resolv)
	}
	waitLog(t, d, spec.ID, "stdout", "listening on :"+port)
	if ids, err := d.List(ctx(t)); err != nil || !slices.Contains(ids, spec.ID) {
		t.Errorf("List() = %v, %v; want it to have %s", ids, err, spec.ID)
	}

	if err := d.Destroy(ctx(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.State(ctx(t), spec.ID); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("State after Destroy: err = %v, want ErrNotFound", err)
	}
	if ids, _ := d.List(ctx(t)); slices.Contains(ids, spec.ID) {
		t.Errorf("List() after Destroy still has %s", spec.ID)
	}
	if s.env.Leftovers != nil {
		if left := s.env.Leftovers(t, spec.ID); len(left) > 0 {
			t.Errorf("Destroy left behind: %v", left)
		}
	}
	if err := d.Destroy(ctx(t), spec.ID); err != nil {
		t.Errorf("second Destroy: %v", err)
	}
}

func (s *suite) user(t *testing.T) {
	for _, tc := range []struct {
		user     string
		uid, gid int
		groups   []int
	}{
		{"", 0, 0, nil},
		{"app", 1000, 1000, []int{2000}},
		{"app:extra", 1000, 2000, []int{2000}},
		{"1234:5678", 1234, 5678, nil},
	} {
		t.Run(strings.ReplaceAll(tc.user, ":", "_"), func(t *testing.T) {
			t.Parallel()
			d := s.newDriver(t)
			spec := s.spec(t, []string{"serve"})
			spec.Process.User = tc.user
			s.create(t, d, spec)
			s.start(t, d, spec.ID)
			in := info(t, spec)
			if in.UID != tc.uid || in.GID != tc.gid {
				t.Errorf("user %q runs as %d:%d, want %d:%d", tc.user, in.UID, in.GID, tc.uid, tc.gid)
			}
			if diff := cmp.Diff(tc.groups, in.Groups); len(tc.groups) > 0 && diff != "" {
				t.Errorf("user %q supplementary groups (-want +got):\n%s", tc.user, diff)
			}
		})
	}
}

func (s *suite) exitCodeAndLogs(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"exit", "3"})
	s.create(t, d, spec)
	for run := 1; run <= 2; run++ {
		s.start(t, d, spec.ID)
		st, err := d.Wait(ctx(t), spec.ID)
		if err != nil || st.Status != runtime.StatusExited || st.ExitCode != 3 || st.ExitedAt.IsZero() {
			t.Fatalf("run %d: Wait = %+v, %v; want exited with code 3", run, st, err)
		}
		if got := strings.Count(readLog(t, d, spec.ID, "stdout"), "hello stdout"); got != run {
			t.Errorf("after run %d stdout has %d lines from the machine, want %d (appended)", run, got, run)
		}
		if got := strings.Count(readLog(t, d, spec.ID, "stderr"), "hello stderr"); got != run {
			t.Errorf("after run %d stderr has %d lines from the machine, want %d (appended)", run, got, run)
		}
	}
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusExited || st.ExitCode != 3 {
		t.Errorf("State = %+v, %v; want exited with code 3", st, err)
	}
}

func (s *suite) stopGracefully(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	info(t, spec)
	begin := time.Now()
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("Stop took %v for a process that exits on SIGTERM", took)
	}
	st, err := d.State(ctx(t), spec.ID)
	if err != nil || st.Status != runtime.StatusExited || st.ExitCode != 0 {
		t.Fatalf("State after Stop = %+v, %v; want exited with code 0", st, err)
	}
	waitLog(t, d, spec.ID, "stdout", "got SIGTERM")
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, time.Second); err != nil {
		t.Errorf("Stop of a stopped machine: %v", err)
	}
	// A stopped machine starts again and serves.
	s.start(t, d, spec.ID)
	info(t, spec)
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("State after restart = %+v, %v; want running", st, err)
	}
}

// signal: a Signaler's signal reaches the running process, which keeps
// running and serving.
func (s *suite) signal(t *testing.T) {
	d := s.newDriver(t)
	sd, ok := d.(runtime.Signaler)
	if !ok {
		t.Skipf("driver %s cannot signal a machine", d.Name())
	}
	spec := s.spec(t, []string{"serve"})
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	info(t, spec)
	if err := sd.Signal(ctx(t), spec.ID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, d, spec.ID, "stdout", "got SIGHUP")
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("State after SIGHUP = %+v, %v; want running", st, err)
	}
	info(t, spec)
}

// stopWithoutHandler: a process with no handler for the stop signal dies
// of it at once, as it would on any Linux host, not after the stop
// timeout; in a runc machine the app is PID 1, which the kernel shields
// from signals it does not handle, so the driver must see to it.
func (s *suite) stopWithoutHandler(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"}, "DEFAULT_SIGTERM=1")
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	info(t, spec)
	const timeout = 20 * time.Second
	begin := time.Now()
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, timeout); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > timeout/2 {
		t.Errorf("Stop took %v for a process with no SIGTERM handler, want far less than its %v timeout", took, timeout)
	}
	st, err := d.State(ctx(t), spec.ID)
	// 143 where the signal itself kills the app (a microVM's init is its
	// parent), 137 where the driver kills PID 1 in its place (runc).
	if err != nil || st.Status != runtime.StatusExited || (st.ExitCode != 128+int(syscall.SIGTERM) && st.ExitCode != 128+int(syscall.SIGKILL)) {
		t.Fatalf("State after Stop = %+v, %v; want exited by SIGTERM or SIGKILL", st, err)
	}
}

func (s *suite) stopKillsAfterTimeout(t *testing.T) {
	d := s.newDriver(t)
	spec := s.spec(t, []string{"serve"}, "IGNORE_SIGTERM=1")
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	info(t, spec)
	const timeout = 300 * time.Millisecond
	begin := time.Now()
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, timeout); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took < timeout {
		t.Errorf("Stop returned after %v, before its %v timeout, for a process that ignores SIGTERM", took, timeout)
	}
	st, err := d.State(ctx(t), spec.ID)
	if err != nil || st.Status != runtime.StatusExited || st.ExitCode != 128+int(syscall.SIGKILL) {
		t.Fatalf("State after Stop = %+v, %v; want exited with code %d (SIGKILL)", st, err, 128+int(syscall.SIGKILL))
	}
}
