package edge

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// TestDemandCountsByApp: requests through the edge are counted per app,
// with how many were in flight on average and which region answered; an
// app the edge has no machine for still counts as demand.
func TestDemandCountsByApp(t *testing.T) {
	w := newWorld(t, "syd")
	w.app("shop")
	w.app("idle")
	release := make(chan struct{})
	slow := startMachine(t, "s1", "iad", "127.0.0.2", func(rw http.ResponseWriter, r *http.Request) {
		<-release
		rw.Write([]byte("ok"))
	})
	w.place("shop", slow, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	w.e.demand.flush(time.Now()) // start a fresh interval
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { get(t, srv, "shop.perch.local", nil) })
	}
	waitFor(t, "4 requests in flight", func() bool {
		v, ok := w.e.demand.apps.Load("shop")
		return ok && v.(*appDemand).inFlight.Load() == 4
	})
	mid := w.e.demand.flush(time.Now())
	if len(mid) != 1 || mid[0].InFlight != 4 || mid[0].Concurrency < 3 || mid[0].Concurrency > 4.01 {
		t.Fatalf("with 4 requests waiting: %+v, want 4 in flight and about 4 on average", mid)
	}
	close(release)
	wg.Wait()
	get(t, srv, "idle.perch.local", nil) // no machine: 503, still demand
	out := w.e.demand.flush(time.Now())
	got := map[string]int{}
	for _, a := range out {
		got[a.App] = int(a.ServedBy["iad"] + a.ServedBy[""])
		if a.App == "shop" && (a.ServedBy["iad"] != 4 || a.InFlight != 0 || a.LatencyMS <= 0) {
			t.Errorf("shop after the answers: %+v, want 4 answered from iad, none in flight", a)
		}
		if a.App == "idle" && (a.ServedBy[""] != 1 || a.RPS <= 0) {
			t.Errorf("idle: %+v, want 1 request no machine answered", a)
		}
	}
	if len(got) != 2 {
		t.Errorf("apps counted: %v, want shop and idle", got)
	}
	t.Logf("4 slow requests over %v: %+v", time.Since(start).Round(time.Millisecond), out)
}
