package health

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// reports collects what a Monitor reports.
type reports struct {
	mu  sync.Mutex
	got [][]api.CheckStatus
	at  []time.Time
}

func (r *reports) add(cs []api.CheckStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, cs)
	r.at = append(r.at, time.Now())
}

func (r *reports) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// wait waits for a report whose statuses are want (one per check) and
// returns when it came.
func (r *reports) wait(t *testing.T, want ...string) time.Time {
	t.Helper()
	_, at := r.waitFrom(t, 0, want...)
	return at
}

// waitFrom is wait for a report from the from-th on; it returns the
// report's index too.
func (r *reports) waitFrom(t *testing.T, from int, want ...string) (int, time.Time) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		for i := from; i < len(r.got); i++ {
			if statuses(r.got[i]) == fmt.Sprint(want) {
				at := r.at[i]
				r.mu.Unlock()
				return i, at
			}
		}
		last := r.got
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no report %v; got %+v", want, last)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statuses(cs []api.CheckStatus) string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = c.Status
	}
	return fmt.Sprint(s)
}

func startMonitor(t *testing.T, host string, started time.Time, checks ...api.Check) (*Monitor, *reports) {
	t.Helper()
	r := &reports{}
	for i := range checks {
		checks[i].Name = DefaultName(i, checks[i])
	}
	m := Start(context.Background(), MonitorConfig{Checks: checks, Host: host, Started: started, Report: r.add})
	t.Cleanup(m.Stop)
	return m, r
}

func TestMonitorLeavesAndReturns(t *testing.T) {
	a := newApp(t, false)
	const interval = 300 * time.Millisecond
	_, r := startMonitor(t, a.host, time.Now().Add(-time.Hour),
		api.Check{Type: "http", Port: a.port, Path: "/health", Interval: interval.String(), Timeout: "100ms"})
	r.wait(t, api.CheckPassing)

	failedAt := time.Now()
	a.answer(503, "draining")
	i, at := r.waitFrom(t, 1, api.CheckCritical)
	if took := at.Sub(failedAt); took > interval+300*time.Millisecond {
		t.Errorf("critical %s after the app started failing; want within one interval (%s)", took, interval)
	}
	r.mu.Lock()
	last := r.got[i][0]
	r.mu.Unlock()
	if last.Output != "GET /health: 503 Service Unavailable: draining" || last.Name != "servicecheck-00-http-"+fmt.Sprint(a.port) || last.UpdatedAt.IsZero() {
		t.Errorf("critical report: %+v", last)
	}

	a.answer(200, "ok")
	r.waitFrom(t, i+1, api.CheckPassing)
}

func TestMonitorReportsOnlyChanges(t *testing.T) {
	a := newApp(t, false)
	_, r := startMonitor(t, a.host, time.Time{},
		api.Check{Type: "http", Port: a.port, Interval: "10ms", Timeout: "2s"}) // a timeout no loaded machine misses: a failed check would be a change
	r.wait(t, api.CheckPassing)
	// Many checks pass; none is reported again.
	for a.count() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	if n := r.n(); n != 1 {
		t.Errorf("%d reports after %d passing checks, want 1", n, a.count())
	}
}

func TestMonitorGracePeriod(t *testing.T) {
	a := newApp(t, false)
	a.answer(500, "starting")
	const grace = 400 * time.Millisecond
	started := time.Now()
	// The interval is long: the check runs at start, then again as the
	// grace period ends, not an interval later.
	_, r := startMonitor(t, a.host, started,
		api.Check{Type: "http", Port: a.port, Interval: "1m", Timeout: "100ms", GracePeriod: grace.String()})
	r.wait(t, api.CheckWarning)
	at := r.wait(t, api.CheckCritical)
	if took := at.Sub(started); took < grace || took > grace+500*time.Millisecond {
		t.Errorf("critical %s after start, want when the %s grace period ends", took, grace)
	}

	// A check that passes in its grace period is passing at once.
	b := newApp(t, false)
	_, r = startMonitor(t, b.host, time.Now(),
		api.Check{Type: "http", Port: b.port, Interval: "1m", GracePeriod: "1m"})
	r.wait(t, api.CheckPassing)
}

func TestMonitorSeveralChecks(t *testing.T) {
	a := newApp(t, false)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tcpPort := ln.Addr().(*net.TCPAddr).Port
	_, r := startMonitor(t, "127.0.0.1", time.Now().Add(-time.Hour),
		api.Check{Type: "tcp", Port: tcpPort, Interval: "50ms", Timeout: "40ms"},
		api.Check{Type: "http", Port: a.port, Interval: "50ms", Timeout: "40ms"},
		api.Check{Type: "http", Port: a.port, Path: "no-slash"},
	)
	// The first report waits for every check; the invalid one says why.
	r.wait(t, api.CheckPassing, api.CheckPassing, api.CheckCritical)
	r.mu.Lock()
	first := r.got[0]
	r.mu.Unlock()
	if first[2].Output != `invalid check: path "no-slash" must start with /, e.g. "/health"` {
		t.Errorf("invalid check's output: %q", first[2].Output)
	}
	ln.Close()
	r.wait(t, api.CheckCritical, api.CheckPassing, api.CheckCritical)
}

func TestMonitorStop(t *testing.T) {
	a := newApp(t, false)
	m, r := startMonitor(t, a.host, time.Time{}, api.Check{Type: "http", Port: a.port, Interval: "10ms", Timeout: "2s"}) // a timeout no loaded machine misses: a failed check would be a change
	r.wait(t, api.CheckPassing)
	m.Stop()
	n, checks := r.n(), a.count()
	a.answer(500, "")
	time.Sleep(100 * time.Millisecond) // ten intervals: a running monitor would have checked and reported
	if r.n() != n || a.count() != checks {
		t.Errorf("after Stop: %d reports (was %d), %d checks (was %d)", r.n(), n, a.count(), checks)
	}
}

func TestSameAndCritical(t *testing.T) {
	now := time.Now()
	a := []api.CheckStatus{{Name: "a", Status: api.CheckPassing, Output: "ok", UpdatedAt: now}}
	b := []api.CheckStatus{{Name: "a", Status: api.CheckPassing, Output: "ok", UpdatedAt: now.Add(time.Minute)}}
	if !Same(a, b) {
		t.Error("results differing only in time are not Same")
	}
	b[0].Output = "other"
	if Same(a, b) {
		t.Error("results with different output are Same")
	}
	if Critical(nil) || Critical(a) || !Critical(append(a, api.CheckStatus{Status: api.CheckCritical})) {
		t.Error("Critical is wrong")
	}
	if Critical([]api.CheckStatus{{Status: api.CheckWarning}}) {
		t.Error("a warning (grace period) counts as critical")
	}
}
