package edge

import (
	"context"
	"errors"
	"time"
)

// Choosing a machine, per [services.concurrency]: the nearest region that
// has a machine under its soft limit, and in it the least loaded machine
// (equals take turns); when every machine is over its soft limit, the
// nearest region with one under its hard limit. Machines that refused a
// connection a moment ago come last. Choosing reads only atomics of the
// snapshot: no lock, no allocation.

// filter narrows the machines one attempt may go to.
type filter struct {
	region  string   // only this region (Perch-Replay region=)
	machine string   // only this machine (Perch-Replay instance=)
	exclude []string // machines already tried
}

func (f *filter) allows(b *Backend) bool {
	if f == nil {
		return true
	}
	if (f.region != "" && b.Target.Region != f.region) || (f.machine != "" && b.Target.MachineID != f.machine) {
		return false
	}
	for _, id := range f.exclude {
		if b.Target.MachineID == id {
			return false
		}
	}
	return true
}

func (f *filter) narrowed() bool {
	return f != nil && (f.region != "" || f.machine != "" || len(f.exclude) > 0)
}

// pick is the machine the next attempt should take a slot on, or nil when
// every machine f allows is at its hard limit (or f allows none).
func (r *portRoute) pick(f *filter) *Backend {
	rot := int(r.next.Add(1) - 1)
	// Passes: 0 under soft limit, 1 under hard limit, then both again
	// with the machines that just refused a connection.
	for pass := range 4 {
		lo := 0
		for _, hi := range r.ends {
			n := hi - lo
			var best *Backend
			var bestLoad int32
			for j := range n {
				b := r.backends[lo+(rot+j)%n]
				if !f.allows(b) || (pass < 2 && b.load.down()) {
					continue
				}
				limit := b.soft
				if pass%2 == 1 {
					limit = b.hard
				}
				if l := b.load.n.Load(); l < limit && (best == nil || l < bestLoad) {
					best, bestLoad = b, l
				}
			}
			if best != nil {
				return best
			}
			lo = hi
		}
	}
	return nil
}

// any says whether f allows some machine of the route, full or not.
func (r *portRoute) any(f *filter) bool {
	for _, b := range r.backends {
		if f.allows(b) {
			return true
		}
	}
	return false
}

var (
	// errBusy: every machine stayed at its hard limit for the whole wait.
	errBusy = errors.New("every machine is at its hard limit")
	// errNoCandidate: no machine of the route is left to try.
	errNoCandidate = errors.New("no machine to try")
)

// narrowPoll is how often a request limited to some machines (a replay, a
// retry) looks for a slot; only requests open to every machine of a port
// wait in its queue, since any freed slot there is theirs to take.
const narrowPoll = 20 * time.Millisecond

// appOf is the name of the app d names.
func (e *Edge) appOf(d dest) string {
	if a := e.table.Snapshot().names[d.host]; a != nil {
		return a.name
	}
	return d.host
}

// dest is where a request or connection goes: an app's name (any name
// the snapshot knows it by) and a public port.
type dest struct {
	host string
	port int
}

// route is the current route of d, or nil.
func (e *Edge) route(d dest) *portRoute { return routeIn(e.table.Snapshot(), d) }

// acquire picks a machine of d's route that f allows and takes a slot on
// it; the caller releases it (b.load.release). When every such machine is
// at its hard limit, it waits up to Limits.QueueTimeout for a slot, first
// come first served, then gives errBusy. When the route has no machine in
// rotation and stopped ones with autostart, it is held while one starts
// (autostart.go). waited is the time it waited.
func (e *Edge) acquire(ctx context.Context, d dest, f *filter) (b *Backend, waited time.Duration, err error) {
	var (
		w        *waiter
		q        *waitQueue
		queued   bool
		timeout  <-chan time.Time
		waitFrom time.Time
		held     time.Duration
	)
	defer func() {
		if queued {
			q.leave(w, false)
		}
		if !waitFrom.IsZero() {
			waited = time.Since(waitFrom)
		}
		waited += held
	}()
	for {
		pr := e.route(d)
		if pr == nil {
			return nil, 0, errNoCandidate
		}
		if !pr.any(f) {
			if held > 0 || f.narrowed() || !e.wakeable(pr) {
				return nil, 0, errNoCandidate
			}
			from := time.Now()
			err := e.hold(ctx, d, e.appOf(d))
			held = max(time.Since(from), time.Nanosecond)
			if err != nil {
				return nil, 0, err
			}
			continue
		}
		if b := pr.pick(f); b != nil {
			if b.soft < noLimit && b.load.n.Load() >= b.soft && len(pr.sleepers) > 0 && pr.waking == 0 && e.cfg.Starter != nil {
				e.wakeMore(d, e.appOf(d), len(pr.backends)) // every machine is over its soft limit
			}
			if b.load.tryAcquire(b.hard) {
				// A drain may have taken the machine out of rotation
				// between the pick and the slot: the drain saw no slot
				// then, so the request must not go there now.
				if cur := e.route(d); cur != pr && (cur == nil || !cur.has(b.Target.MachineID)) {
					b.load.release()
					continue
				}
				if queued {
					q.leave(w, true)
					queued = false
				}
				return b, 0, nil
			}
			continue // another request took its last slot: choose again
		}
		if timeout == nil {
			if e.limits.QueueTimeout <= 0 || (!f.narrowed() && pr.q.len() >= e.limits.MaxQueued) {
				return nil, 0, errBusy
			}
			t := time.NewTimer(e.limits.QueueTimeout)
			defer t.Stop()
			timeout, waitFrom = t.C, time.Now()
		}
		if f.narrowed() {
			select {
			case <-time.After(narrowPoll):
				continue
			case <-timeout:
				return nil, 0, errBusy
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		}
		if !queued {
			// Queue, then look once more before sleeping: a slot freed
			// in between woke nobody.
			if w == nil {
				w = &waiter{ch: make(chan struct{}, 1)}
				q = pr.q
				q.enqueue(w)
			} else {
				q.requeue(w) // woken, but another took the slot: stay first
			}
			queued = true
			continue
		}
		select {
		case <-w.ch:
			queued = false
		case <-timeout:
			return nil, 0, errBusy
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}
