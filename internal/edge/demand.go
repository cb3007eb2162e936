package edge

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/store"
)

// demand counts, per app, the requests entering through this edge (whose
// region is their origin region) for the autoscaler. The request path
// only touches atomics of the app's counter (found in a sync.Map); a
// publisher swaps the counts out every store.DemandInterval and publishes
// them on perch.demand.<region> with a core NATS publish, which never
// waits for the network.
type demand struct {
	apps sync.Map // app name -> *appDemand
}

type appDemand struct {
	requests atomic.Int64 // arrived in the interval
	inFlight atomic.Int64
	busyUS   atomic.Int64 // microseconds of requests in flight within the interval
	doneN    atomic.Int64 // finished in the interval
	doneUS   atomic.Int64 // their total time
	since    atomic.Int64 // unix micros the interval began
	served   sync.Map     // machine region -> *atomic.Int64, finished in the interval
	idle     atomic.Int32 // intervals in a row with nothing: dropped after a few
}

// demandStart is a request's mark, given back to demandEnd.
type demandStart struct {
	a     *appDemand
	start int64 // unix micros
}

// begin counts a request of app arriving.
func (d *demand) begin(app string) demandStart {
	v, ok := d.apps.Load(app)
	if !ok {
		a := &appDemand{}
		a.since.Store(time.Now().UnixMicro())
		v, _ = d.apps.LoadOrStore(app, a)
	}
	a := v.(*appDemand)
	a.requests.Add(1)
	a.inFlight.Add(1)
	return demandStart{a: a, start: time.Now().UnixMicro()}
}

// end counts the request finished, answered by a machine in region ("" if
// none answered).
func (ds demandStart) end(region string) {
	a := ds.a
	if a == nil {
		return
	}
	now := time.Now().UnixMicro()
	a.inFlight.Add(-1)
	// Only the part within the current interval counts as busy time; the
	// earlier part was counted by the flush of the interval it was in
	// (flushIn below).
	from := max(ds.start, a.since.Load())
	a.busyUS.Add(max(now-from, 0))
	a.doneN.Add(1)
	a.doneUS.Add(now - ds.start)
	v, ok := a.served.Load(region)
	if !ok {
		v, _ = a.served.LoadOrStore(region, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

// flush takes every app's counts of the interval ending now.
func (d *demand) flush(now time.Time) []store.AppDemand {
	var out []store.AppDemand
	nowUS := now.UnixMicro()
	d.apps.Range(func(k, v any) bool {
		a := v.(*appDemand)
		since := a.since.Swap(nowUS)
		secs := float64(nowUS-since) / 1e6
		if secs <= 0 {
			return true
		}
		n := a.requests.Swap(0)
		inFlight := a.inFlight.Load()
		// Requests still in flight were busy for the whole interval (or
		// since they arrived); approximate by the whole interval, which
		// overcounts only those that arrived within it.
		busy := float64(a.busyUS.Swap(0)) + float64(inFlight)*float64(nowUS-since)
		doneN, doneUS := a.doneN.Swap(0), a.doneUS.Swap(0)
		if n == 0 && inFlight == 0 && doneN == 0 {
			if a.idle.Add(1) > 3 {
				d.apps.CompareAndDelete(k, v)
			}
			return true
		}
		a.idle.Store(0)
		ad := store.AppDemand{App: k.(string), RPS: float64(n) / secs, Concurrency: busy / 1e6 / secs, InFlight: inFlight}
		if doneN > 0 {
			ad.LatencyMS = float64(doneUS) / float64(doneN) / 1000
		}
		a.served.Range(func(r, c any) bool {
			if x := c.(*atomic.Int64).Swap(0); x > 0 {
				if ad.ServedBy == nil {
					ad.ServedBy = map[string]int64{}
				}
				ad.ServedBy[r.(string)] = x
			}
			return true
		})
		out = append(out, ad)
		return true
	})
	return out
}

// publishDemand publishes this edge's demand every store.DemandInterval
// until ctx is done. An interval with no request publishes nothing.
func (e *Edge) publishDemand(ctx context.Context, nc *nats.Conn) {
	t := time.NewTicker(store.DemandInterval)
	defer t.Stop()
	subj := store.DemandSubject(e.cfg.Region, e.cfg.HostID)
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			apps := e.demand.flush(now)
			iv := now.Sub(last).Seconds()
			last = now
			if len(apps) == 0 {
				continue
			}
			b, err := json.Marshal(store.DemandReport{Region: e.cfg.Region, HostID: e.cfg.HostID, At: now.UTC(), Interval: iv, Apps: apps})
			if err == nil {
				err = nc.Publish(subj, b)
			}
			if err != nil {
				e.log.Debug("cannot publish demand", "err", err)
			}
		}
	}
}
