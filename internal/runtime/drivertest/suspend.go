package drivertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

// suspendResume: a machine holding state in memory (testapp's counter) is
// suspended, stops serving, and on the next Start serves again with the
// counter where it was, and its output still reaches its logs. A snapshot
// discarded boots the machine afresh: the counter is back to 0.
func (s *suite) suspendResume(t *testing.T) {
	d := s.newDriver(t)
	sus, ok := d.(runtime.Suspender)
	if !ok {
		t.Skipf("driver %s cannot suspend machines", d.Name())
	}
	spec := s.spec(t, []string{"serve"}, "UNACCEPTED_PORT=9090")
	spec.Suspendable = true // as for a service that autostops by suspend
	s.create(t, d, spec)
	s.start(t, d, spec.ID)
	for want := 1; want <= 3; want++ {
		if got := count(t, spec, "POST"); got != fmt.Sprint(want) {
			t.Fatalf("POST /count = %q, want %d", got, want)
		}
	}
	// A connection the app has not accepted yet (a health probe's, say)
	// does not keep the machine from being suspended.
	inFlight, err := net.DialTimeout("tcp", net.JoinHostPort(spec.Net.Addr.Addr().String(), "9090"), 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the port the app never accepts on: %v", err)
	}
	defer inFlight.Close()
	du, _ := d.(runtime.DiskUser)
	var running int64
	if du != nil {
		if running, err = du.DiskUsage(ctx(t), spec.ID); err != nil {
			t.Fatalf("DiskUsage of the running machine: %v", err)
		}
	}
	if err := sus.Suspend(ctx(t), spec.ID); err != nil {
		if errors.Is(err, runtime.ErrCannotSuspend) && strings.Contains(err.Error(), "not installed") {
			t.Skip(err)
		}
		t.Fatalf("Suspend: %v", err)
	}
	// Metering bills a suspended machine's own disk: the snapshot counts.
	if du != nil {
		suspended, err := du.DiskUsage(ctx(t), spec.ID)
		t.Logf("the machine's own disk: %d KiB running, %d KiB suspended", running>>10, suspended>>10)
		if err != nil || suspended-running < 256<<10 {
			t.Errorf("DiskUsage once suspended = %d, %v; want at least 256 KiB (the snapshot) over the %d while running", suspended, err, running)
		}
	}
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusSuspended {
		t.Fatalf("State after Suspend = %+v, %v; want %s", st, err, runtime.StatusSuspended)
	}
	wctx, cancel := context.WithTimeout(ctx(t), 5*time.Second)
	defer cancel()
	if st, err := d.Wait(wctx, spec.ID); err != nil || st.Status != runtime.StatusSuspended {
		t.Errorf("Wait on a suspended machine = %+v, %v; want it to return %s", st, err, runtime.StatusSuspended)
	}
	quick := &http.Client{Transport: &http.Transport{}, Timeout: 300 * time.Millisecond}
	if resp, err := quick.Get(fmt.Sprintf("http://%s:%s/count", spec.Net.Addr.Addr(), port)); err == nil {
		resp.Body.Close()
		t.Errorf("a suspended machine answered GET /count: %s", resp.Status)
	}

	start := time.Now()
	s.start(t, d, spec.ID)
	if got := count(t, spec, "GET"); got != "3" {
		t.Fatalf("after resume GET /count = %q, want 3 (the counter from before Suspend)", got)
	}
	t.Logf("resumed and served in %v", time.Since(start).Round(time.Millisecond))
	if got := count(t, spec, "POST"); got != "4" {
		t.Errorf("after resume POST /count = %q, want 4", got)
	}
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Errorf("State after resume = %+v, %v; want running", st, err)
	}
	// The resumed process's output still reaches the machine's log.
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatalf("Stop after resume: %v", err)
	}
	waitLog(t, d, spec.ID, "stdout", "got SIGTERM")

	// Suspend again, discard the snapshot: a fresh boot.
	s.start(t, d, spec.ID)
	if got := count(t, spec, "POST"); got != "1" {
		t.Fatalf("fresh start POST /count = %q, want 1", got)
	}
	if err := sus.Suspend(ctx(t), spec.ID); err != nil {
		t.Fatalf("second Suspend: %v", err)
	}
	if err := sus.DiscardSnapshot(ctx(t), spec.ID); err != nil {
		t.Fatalf("DiscardSnapshot: %v", err)
	}
	if st, err := d.State(ctx(t), spec.ID); err != nil || st.Status == runtime.StatusSuspended {
		t.Errorf("State after DiscardSnapshot = %+v, %v; want not suspended", st, err)
	}
	s.start(t, d, spec.ID)
	if got := count(t, spec, "GET"); got != "0" {
		t.Errorf("after a discarded snapshot GET /count = %q, want 0 (a fresh boot)", got)
	}
	if err := d.Stop(ctx(t), spec.ID, syscall.SIGKILL, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := sus.Suspend(ctx(t), spec.ID); err == nil {
		t.Errorf("Suspend of a stopped machine succeeded; want an error")
	}
}

// count sends method /count and returns the counter.
func count(t *testing.T, spec runtime.Spec, method string) string {
	t.Helper()
	code, body := get(t, spec, method, "/count")
	if code != 200 {
		t.Fatalf("%s /count: %d %s", method, code, body)
	}
	return body
}
