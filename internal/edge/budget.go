package edge

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
)

// What the edge does for budgets (package billing): it counts the bytes
// it sends to clients per app, for metering, and answers an app suspended
// at its monthly budget with 503 until the suspension ends.

// egressCounter counts bytes out per app since the last Take.
type egressCounter struct {
	m sync.Map // app → *atomic.Int64
}

func (c *egressCounter) add(app string, n int64) {
	if n <= 0 || app == "" {
		return
	}
	v, ok := c.m.Load(app)
	if !ok {
		v, _ = c.m.LoadOrStore(app, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(n)
}

// TakeEgress returns the bytes sent to clients per app (by machines of
// the app, through this edge) since its last call, and starts over.
func (e *Edge) TakeEgress() map[string]int64 {
	out := map[string]int64{}
	e.egress.m.Range(func(k, v any) bool {
		if n := v.(*atomic.Int64).Swap(0); n > 0 {
			out[k.(string)] += n
		}
		return true
	})
	return maps.Clone(out)
}

const rejectSuspended = "suspended" // the app is suspended at its budget

// suspended answers a request for an app suspended at its budget: 503,
// Retry-After until the suspension ends, and a short page saying why.
// The end is in billing's clock; Retry-After is the real seconds until
// that clock reaches it (with a FastClock, fewer than its own).
func suspended(w http.ResponseWriter, app string, s *api.Suspension, clock billing.Clock) {
	secs := max(1, int(math.Ceil(billing.RealUntil(clock, s.ResumesAt).Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "<!doctype html><title>%[1]s is paused</title><h1>%[1]s is paused</h1><p>perch: app %[1]q is %s.</p>\n",
		app, s.Message())
}

// suspension is the table's name for an app's budget suspension.
type suspension = api.Suspension
