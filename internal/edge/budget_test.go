package edge

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
)

// TestSuspendedAppGets503AndItsBytesAreCounted: an app's bytes out are
// counted for metering (and taken once); once the app is suspended at its
// budget, its requests get 503, a Retry-After until the suspension ends
// and a page saying why, and no machine sees them.
func TestSuspendedAppGets503AndItsBytesAreCounted(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("capped")
	w.place("capped", startMachine(t, "c1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	res, body := get(t, srv, "capped.perch.local", nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("before: %d %s", res.StatusCode, body)
	}
	// The edge counts a request's bytes when it has finished it, which on
	// the net/http path may be just after the client read the answer.
	var got int64
	waitFor(t, "the answer's bytes counted as egress", func() bool {
		got += w.e.TakeEgress()["capped"]
		return got >= int64(len(body))
	})
	if got != int64(len(body)) {
		t.Errorf("egress %d bytes, want the body's %d", got, len(body))
	}
	if got := w.e.TakeEgress()["capped"]; got != 0 {
		t.Errorf("egress taken twice: %d", got)
	}

	resumes := time.Now().Add(time.Hour).Truncate(time.Second)
	w.e.table.setApp("capped", api.App{Name: "capped", Suspended: &api.Suspension{Budget: 50, Scope: "app",
		ReachedAt: time.Date(2026, 12, 19, 8, 0, 0, 0, time.UTC), ResumesAt: resumes}})
	w.commit()
	res, body = get(t, srv, "capped.perch.local", nil)
	ra, _ := strconv.Atoi(res.Header.Get("Retry-After"))
	if res.StatusCode != http.StatusServiceUnavailable || ra < 3500 || ra > 3600 {
		t.Errorf("suspended: status %d, Retry-After %q; want 503 and about 3600", res.StatusCode, res.Header.Get("Retry-After"))
	}
	if !strings.Contains(body, "suspended: monthly budget of $50 reached on 2026-12-19") {
		t.Errorf("page does not say why: %s", body)
	}
	// A second request on the same keep-alive connection is read only
	// once the edge has finished the first: its count is in by then.
	if res, _ := get(t, srv, "capped.perch.local", nil); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("suspended, again: status %d", res.StatusCode)
	}
	if got := w.e.TakeEgress()["capped"]; got != 0 {
		t.Errorf("the edge's own 503 counted as the app's egress: %d bytes", got)
	}
}

// TestSuspendedRetryAfterFollowsTheBillingClock: with a clock running 60
// times faster than the wall (a test's month in seconds) an hour before
// the suspension ends, Retry-After is the real minute until that clock
// reaches it, not the wall clock's time to that date.
func TestSuspendedRetryAfterFollowsTheBillingClock(t *testing.T) {
	w := newWorld(t, "ams")
	resumes := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	w.e.cfg.Clock = billing.FastClock{Epoch: time.Now(), Start: resumes.Add(-time.Hour), Rate: 60}
	w.app("capped")
	w.place("capped", startMachine(t, "c1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.e.table.setApp("capped", api.App{Name: "capped", Suspended: &api.Suspension{Budget: 50, Scope: "app",
		ReachedAt: resumes.AddDate(0, 0, -3), ResumesAt: resumes}})
	w.commit()
	srv := w.serve(80)
	res, _ := get(t, srv, "capped.perch.local", nil)
	ra, err := strconv.Atoi(res.Header.Get("Retry-After"))
	if res.StatusCode != http.StatusServiceUnavailable || err != nil || ra < 55 || ra > 60 {
		t.Errorf("status %d, Retry-After %q; want 503 and the real minute (60 s) until the clock reaches %s",
			res.StatusCode, res.Header.Get("Retry-After"), resumes)
	}
}
