package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
	"github.com/perchhq/perch/internal/store"
)

// Autostart (docs/autostop.md): a request for an app that has no machine
// in rotation for its port, but stopped or suspended machines whose
// service has autostart, is held while the edge starts the nearest of
// them through its Starter (the agent: a machine of this host directly,
// another host's by one NATS request to that host), and goes there as
// soon as the machine is ready, which the edge learns from its watch like
// any change. Concurrent requests for one app start one machine: the
// first starts it, the others wait for the same start. The hold is the
// only wait on the request path that is not for a slot; nothing else
// leaves memory. A request that finds every machine over its soft limit
// is not held: it goes to one of them (under its hard limit) while the
// edge starts a stopped one in the background.

// Starter starts a stopped or suspended machine for a request. It returns
// once the start is asked for (the machine's desired state written), not
// once the machine runs; it is idempotent.
type Starter interface {
	StartMachine(ctx context.Context, t Target) error
}

// sleeper is a stopped or suspended machine a request may start.
type sleeper struct {
	Target
	suspended bool // resumes faster than a cold start: preferred
}

// addSleeper notes machine key in pr's sleepers if it is stopped or
// suspended (or exited by itself), or counts it as waking if it is meant
// to be started and not ready yet; t.mu is held. Only machines on hosts that are up and that
// this edge reaches count.
func (t *table) addSleeper(pr *portRoute, key string, m *store.MachineSpec) {
	h, ok := t.hosts[m.HostID]
	if !ok || h.Status == hostDown || m.PrivateIP == "" || m.Cordoned {
		return
	}
	local := t.hostID != "" && m.HostID == t.hostID
	if !local && t.reachable != nil && !t.reachable(m.HostID) {
		return
	}
	st := t.status[key]
	exited := m.Desired == store.DesireStarted && st.State == api.StateStopped && st.Generation == m.Generation
	switch {
	case m.Desired == store.DesireStopped, m.Desired == store.DesireSuspended, exited:
		for _, s := range pr.sleepers {
			if s.MachineID == m.ID {
				return
			}
		}
		pr.sleepers = append(pr.sleepers, sleeper{
			Target:    Target{App: m.App, Org: t.orgOf(m), MachineID: m.ID, HostID: m.HostID, Region: m.Region, Local: local},
			suspended: st.State == api.StateSuspended,
		})
	case m.Desired == store.DesireStarted:
		switch {
		case st.Generation != m.Generation, st.State == api.StateStarting, st.State == api.StateCreated,
			st.State == api.StateStarted && !health.Critical(st.Checks):
			pr.waking++
		}
	}
}

// orderSleepers sorts the sleepers nearest first: by region rank, then
// this host's before others, suspended before stopped, then by id.
func (r *portRoute) orderSleepers(rank map[string]int) {
	slices.SortFunc(r.sleepers, func(a, b sleeper) int {
		return cmp.Or(
			cmp.Compare(rank[a.Region], rank[b.Region]),
			boolFirst(a.Local, b.Local),
			boolFirst(a.suspended, b.suspended),
			cmp.Compare(a.MachineID, b.MachineID),
		)
	})
}

func boolFirst(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// wakeable says whether a request on pr with no backend should be held
// for a machine to start.
func (e *Edge) wakeable(pr *portRoute) bool {
	return e.cfg.Starter != nil && (len(pr.sleepers) > 0 || pr.waking > 0)
}

// wakeError is why a held request got no machine.
type wakeError struct{ err error }

func (w *wakeError) Error() string { return w.err.Error() }
func (w *wakeError) Unwrap() error { return w.err }

// wakes is the singleflight of starts, one per app.
type wakes struct {
	mu    sync.Mutex
	calls map[string]*wakeCall
}

// wakeCall is one start of a machine of an app and the wait for it to be
// ready; err is set before done is closed.
type wakeCall struct {
	done chan struct{}
	err  error
}

// join returns the app's start under way, or a new one that the caller
// (leader) must run.
func (w *wakes) join(app string) (c *wakeCall, leader bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.calls[app]; c != nil {
		return c, false
	}
	if w.calls == nil {
		w.calls = map[string]*wakeCall{}
	}
	c = &wakeCall{done: make(chan struct{})}
	w.calls[app] = c
	return c, true
}

func (w *wakes) finish(app string, c *wakeCall, err error) {
	w.mu.Lock()
	delete(w.calls, app)
	w.mu.Unlock()
	c.err = err
	close(c.done)
}

// hold waits until a machine of d's route is in rotation, starting one if
// none is on its way (or joining the start another request began), at
// most Limits.StartTimeout. It gives a *wakeError when none came.
func (e *Edge) hold(ctx context.Context, d dest, app string) error {
	c, leader := e.wakes.join(app)
	if leader {
		go e.wake(d, app, c, 0)
	}
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wakeMore starts one more machine of d's route in the background, for a
// request that found every machine over its soft limit; it does nothing
// if a start is under way.
func (e *Edge) wakeMore(d dest, app string, have int) {
	if c, leader := e.wakes.join(app); leader {
		go e.wake(d, app, c, have)
	}
}

// wake starts the nearest sleeper of d's route, unless a machine is on its
// way already, and waits until the route has more than have backends.
func (e *Edge) wake(d dest, app string, c *wakeCall, have int) {
	ctx, cancel := context.WithTimeout(context.Background(), e.limits.StartTimeout)
	defer cancel()
	start := time.Now()
	var woke *sleeper
	err := func() error {
		for {
			snap := e.table.Snapshot()
			pr := routeIn(snap, d)
			if pr == nil {
				return errNoCandidate
			}
			if len(pr.backends) > have {
				return nil
			}
			if woke == nil && pr.waking == 0 {
				s, err := e.startOne(ctx, pr.sleepers)
				if err != nil {
					return err
				}
				woke = s
			}
			select {
			case <-snap.replaced:
			case <-ctx.Done():
				what := "a machine meant to be started"
				if woke != nil {
					what = "machine " + woke.MachineID
				}
				return fmt.Errorf("%s did not become ready within %s", what, e.limits.StartTimeout)
			}
		}
	}()
	if err != nil {
		e.metrics.autostarts.WithLabelValues(app, "failed").Inc()
		e.log.Warn("autostart: no machine came up for held requests", "app", app, "err", err)
		e.appLogs.log(app, "autostart: requests were held for a machine to start, and none came: "+err.Error())
		e.wakes.finish(app, c, &wakeError{err: err})
		return
	}
	if woke != nil {
		e.metrics.autostarts.WithLabelValues(app, "started").Inc()
		e.log.Info("autostart: machine ready for held requests", "app", app, "machine", woke.MachineID,
			"machine_region", woke.Region, "resumed", woke.suspended, "took", time.Since(start).Round(time.Millisecond))
	}
	e.wakes.finish(app, c, nil)
}

// startOne asks the Starter to start the first sleeper that it can, of
// the nearest three.
func (e *Edge) startOne(ctx context.Context, sleepers []sleeper) (*sleeper, error) {
	if len(sleepers) == 0 {
		return nil, errors.New("no stopped machine with autostart is left to start")
	}
	var errs []error
	for i := range min(3, len(sleepers)) {
		s := &sleepers[i]
		err := e.cfg.Starter.StartMachine(ctx, s.Target)
		if err == nil {
			e.log.Info("autostart: starting machine", "app", s.App, "machine", s.MachineID, "machine_region", s.Region, "host", s.HostID)
			return s, nil
		}
		e.log.Warn("autostart: could not start machine", "app", s.App, "machine", s.MachineID, "host", s.HostID, "err", err)
		errs = append(errs, fmt.Errorf("machine %s: %w", s.MachineID, err))
	}
	return nil, fmt.Errorf("could not start a stopped machine: %w", errors.Join(errs...))
}

// routeIn is d's route in snapshot s, or nil.
func routeIn(s *Snapshot, d dest) *portRoute {
	if a := s.names[d.host]; a != nil {
		return a.ports[d.port]
	}
	return nil
}
