package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/store"
)

// Autostop and autostart (docs/autostop.md). A machine whose service has
// autostop is watched by its own host: when neither this host's edge nor
// the mesh relay (the other hosts' edges) has had a request or connection
// in flight to it for the service's idle timeout, the host stops it, or
// suspends it (suspendForIdle, which falls back to a stop saying why),
// unless that would leave fewer than min_machines_running started
// machines of the app in its region. The count and the change of desired
// state happen under a short lock per app and region in perch_locks, so
// two hosts of a region never both take the last machine above the
// minimum. The stop is recorded in the spec like any (desired stopped, a
// new generation, with the reason for the event), and the worker drains
// and stops the machine as for `perch machine stop`.
//
// Autostart is the other way: an edge holding a request asks the machine's
// host to start it, this host's directly (starter), another's by one NATS
// request on store.StartSubject, which serveStarts answers.

const (
	// autostopEvery is how often the host looks at its machines' activity.
	autostopEvery = 500 * time.Millisecond
	// autostopLockTTL: a lock this old belongs to a host that died holding it.
	autostopLockTTL = 30 * time.Second
	// autostopRetry bounds how long a machine kept above the minimum waits
	// before the host looks at it again.
	autostopRetry = 30 * time.Second
)

// autostopPolicy is what a machine's services say about autostop: the
// strongest mode ("suspend" over "stop"), the shortest idle timeout of
// the services with autostop, the highest min_machines_running.
type autostopPolicy struct {
	mode       api.Autostop
	idle       time.Duration
	minRunning int
}

func autostopOf(c api.MachineConfig) (autostopPolicy, bool) {
	var p autostopPolicy
	for _, s := range c.Services {
		if s.MinMachinesRunning != nil {
			p.minRunning = max(p.minRunning, *s.MinMachinesRunning)
		}
		if !s.Autostop.On() {
			continue
		}
		idle := api.DefaultIdleTimeout
		if d, err := time.ParseDuration(s.IdleTimeout); err == nil && d > 0 {
			idle = d
		}
		if p.mode == "" || idle < p.idle {
			p.idle = idle
		}
		if p.mode != api.AutostopSuspend {
			p.mode = s.Autostop
		}
	}
	return p, p.mode != ""
}

// idleClock follows one machine in rotation: since is when it was last
// busy, or when it came into rotation.
type idleClock struct {
	since   time.Time
	retryAt time.Time // kept above the minimum: not asked again before
}

// observe notes what is in flight to the machine now and when its last
// request or connection ended.
func (c *idleClock) observe(now time.Time, inflight int, lastEnded time.Time) {
	if inflight > 0 {
		c.since = now
	} else if lastEnded.After(c.since) {
		c.since = lastEnded
	}
}

// due says whether the machine has been idle for idle and may be asked
// about now.
func (c *idleClock) due(now time.Time, idle time.Duration) bool {
	return now.Sub(c.since) >= idle && !now.Before(c.retryAt)
}

// startedIn counts the machines of specs in region that are meant to be
// started and that their host reports started for that spec.
func startedIn(region string, specs []store.MachineSpec, statuses []store.MachineStatus) int {
	st := make(map[string]store.MachineStatus, len(statuses))
	for _, s := range statuses {
		st[s.ID] = s
	}
	n := 0
	for _, m := range specs {
		s, ok := st[m.ID]
		if m.Region == region && m.Desired == store.DesireStarted && ok && s.State == api.StateStarted && s.Generation == m.Generation {
			n++
		}
	}
	return n
}

// runAutostop looks at this host's machines every autostopEvery until ctx
// is done.
func (a *Agent) runAutostop(ctx context.Context, e *edge.Edge) {
	clocks := map[string]*idleClock{}
	t := time.NewTicker(autostopEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.autostopOnce(ctx, e, clocks, time.Now())
	}
}

func (a *Agent) autostopOnce(ctx context.Context, e *edge.Edge, clocks map[string]*idleClock, now time.Time) {
	inRotation := map[string]bool{}
	for _, r := range e.Snapshot().Machines() {
		if r.HostID == a.host.ID && r.Started {
			inRotation[store.MachineKey(r.App, r.ID)] = true
		}
	}
	a.mu.Lock()
	workers := make([]*worker, 0, len(a.workers))
	for _, w := range a.workers {
		workers = append(workers, w)
	}
	a.mu.Unlock()
	seen := map[string]bool{}
	for _, w := range workers {
		spec, removed := w.current()
		pol, on := autostopOf(spec.Config)
		if removed || !on || spec.Desired != store.DesireStarted || !inRotation[w.key] {
			continue // its clock starts afresh when it is back in rotation
		}
		seen[w.key] = true
		c := clocks[w.key]
		if c == nil {
			c = &idleClock{since: now}
			clocks[w.key] = c
		}
		n, last := e.Activity(spec.App, spec.ID)
		rn, rlast := a.relays.of(spec.PrivateIP)
		if rlast.After(last) {
			last = rlast
		}
		c.observe(now, int(n)+rn, last)
		if !c.due(now, pol.idle) {
			continue
		}
		if stopped, why := a.autostop(ctx, w, pol); !stopped {
			c.retryAt = now.Add(min(pol.idle, autostopRetry))
			w.log.Debug("autostop: idle machine kept", "idle", now.Sub(c.since).Round(time.Millisecond), "why", why)
			continue
		}
		delete(clocks, w.key)
		delete(seen, w.key)
	}
	for k := range clocks {
		if !seen[k] {
			delete(clocks, k)
		}
	}
}

// autostop stops or suspends w's idle machine unless the region would be
// left with fewer than pol.minRunning started machines of the app. It
// says why not when it did not.
func (a *Agent) autostop(ctx context.Context, w *worker, pol autostopPolicy) (bool, string) {
	spec, _ := w.current()
	release, ok, err := a.st.TryLock(ctx, "autostop."+spec.App+"."+spec.Region, autostopLockTTL)
	if err != nil {
		return false, err.Error()
	}
	if !ok {
		return false, "another host of the region is deciding for the app"
	}
	defer release()
	specs, err := store.List[store.MachineSpec](ctx, a.st.Machines, spec.App+".*")
	if err != nil {
		return false, err.Error()
	}
	statuses, err := store.List[store.MachineStatus](ctx, a.st.Status, spec.App+".*")
	if err != nil {
		return false, err.Error()
	}
	if n := startedIn(spec.Region, specs, statuses); n-1 < pol.minRunning {
		return false, fmt.Sprintf("min_machines_running is %d and %d machine(s) of the app are started in %s", pol.minRunning, n, spec.Region)
	}
	reason := fmt.Sprintf("idle for %s (autostop)", pol.idle)
	if pol.mode == api.AutostopSuspend {
		suspended, why, err := w.suspendForIdle(ctx, reason)
		switch {
		case err != nil:
			return false, err.Error()
		case suspended:
			w.log.Info("autostop: suspending idle machine", "idle_timeout", pol.idle)
			return true, ""
		}
		reason += "; stopped instead of suspended: " + why
	}
	if err := w.desireIdle(ctx, store.DesireStopped, reason); err != nil {
		return false, err.Error()
	}
	w.log.Info("autostop: stopping idle machine", "idle_timeout", pol.idle)
	return true, ""
}

// desireIdle records in the spec that the machine, meant to be started at
// the generation the worker knows, is to be stopped or suspended for
// reason. errSpecChanged if the spec moved on meanwhile.
func (w *worker) desireIdle(ctx context.Context, desired, reason string) error {
	spec, removed := w.current()
	if removed || spec.Desired != store.DesireStarted {
		return errSpecChanged
	}
	gen := spec.Generation
	_, err := store.Modify(ctx, w.a.st.Machines, spec.Key(), func(m *store.MachineSpec) error {
		if m.Generation != gen || m.Desired != store.DesireStarted {
			return errSpecChanged
		}
		m.Desired = desired
		m.Generation++
		m.Reason, m.ReasonGeneration = reason, m.Generation
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording the %s: %w", desired, err)
	}
	return nil
}

var errSpecChanged = errors.New("the machine's spec changed meanwhile")

// relayActivity counts the relay's connections by machine address: the
// other hosts' edges' traffic to this host's machines.
type relayActivity struct {
	mu sync.Mutex
	by map[string]*relayCount // by machine IP
}

type relayCount struct {
	n    int
	last time.Time // when the last one ended
}

// observe is the relay's mesh.RelayObserver.
func (r *relayActivity) observe(addr string) (done func()) {
	ip, _, err := net.SplitHostPort(addr)
	if err != nil {
		ip = addr
	}
	r.mu.Lock()
	if r.by == nil {
		r.by = map[string]*relayCount{}
	}
	c := r.by[ip]
	if c == nil {
		c = &relayCount{}
		r.by[ip] = c
	}
	c.n++
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		c.n--
		c.last = time.Now()
		r.mu.Unlock()
	}
}

// of is what the relay has open to machine ip and when its last
// connection there ended.
func (r *relayActivity) of(ip string) (int, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.by[ip]; c != nil {
		return c.n, c.last
	}
	return 0, time.Time{}
}

// starter is the edge's Starter: machines of this host are started
// directly, others by a request to their host.
type starter struct{ a *Agent }

var _ edge.Starter = starter{}

// startAsk bounds the wait for another host's answer.
const startAsk = 5 * time.Second

func (s starter) StartMachine(ctx context.Context, t edge.Target) error {
	req := store.StartRequest{App: t.App, ID: t.MachineID, Region: s.a.cfg.Region}
	if t.Local || t.HostID == s.a.host.ID {
		return s.a.startForRequest(ctx, req)
	}
	b, _ := json.Marshal(req)
	rctx, cancel := context.WithTimeout(ctx, startAsk)
	defer cancel()
	msg, err := s.a.st.Conn().RequestWithContext(rctx, store.StartSubject(t.HostID, s.a.host.ID), b)
	if err != nil {
		return fmt.Errorf("asking host %s to start machine %s: %w", t.HostID, t.MachineID, err)
	}
	var rep store.StartReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return fmt.Errorf("host %s's answer to starting machine %s: %w", t.HostID, t.MachineID, err)
	}
	if rep.Error != "" {
		return fmt.Errorf("host %s: %s", t.HostID, rep.Error)
	}
	return nil
}

// serveStarts answers other hosts' edges' start requests for this host's
// machines until ctx is done.
func (a *Agent) serveStarts(ctx context.Context) {
	sub, err := a.st.Conn().Subscribe(store.StartSubjects(a.host.ID), func(m *nats.Msg) {
		var req store.StartRequest
		if json.Unmarshal(m.Data, &req) != nil || m.Reply == "" {
			return
		}
		go func() {
			var rep store.StartReply
			req.From = store.StartSender(m.Subject)
			err := a.checkStartSender(ctx, req.From, req)
			if err == nil {
				err = a.startForRequest(ctx, req)
			}
			if err != nil {
				rep.Error = err.Error()
			}
			b, _ := json.Marshal(rep)
			_ = m.Respond(b)
		}()
	})
	if err != nil {
		a.log.Warn("cannot answer start requests; other hosts' edges cannot autostart this host's machines", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

// checkStartSender: a start request comes from the edge of host from
// (the subject names it, and a host may publish only its own), and the
// region it names is that host's, as the control plane recorded it
// (perch_hosts, which no host writes).
func (a *Agent) checkStartSender(ctx context.Context, from string, req store.StartRequest) error {
	if from == "" {
		return errors.New("start request names no sending host")
	}
	h, _, err := store.Get[api.Host](ctx, a.st.Hosts, from)
	if err != nil {
		return fmt.Errorf("start request from host %s: %w", from, err)
	}
	if h.Region != req.Region {
		return fmt.Errorf("start request from host %s of region %s names region %q", from, h.Region, req.Region)
	}
	return nil
}

// errStartedAlready: the machine is meant to be started; nothing to write.
var errStartedAlready = errors.New("started already")

// startForRequest records that a stopped or suspended machine of this
// host (or one that exited by itself) is to be started for a request an
// edge holds; a machine meant to be started and not stopped is left as
// it is.
func (a *Agent) startForRequest(ctx context.Context, req store.StartRequest) error {
	key := store.MachineKey(req.App, req.ID)
	// A machine that exited by itself is meant to be started still, and
	// stays stopped for that generation: a new one starts it.
	st, _, err := store.Get[store.MachineStatus](ctx, a.st.Status, key)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	_, err = store.Modify(ctx, a.st.Machines, key, func(m *store.MachineSpec) error {
		exited := st.State == api.StateStopped && st.Generation == m.Generation
		switch {
		case m.HostID != a.host.ID:
			return fmt.Errorf("machine %s is on host %s, not this one (%s)", m.ID, m.HostID, a.host.ID)
		case m.Desired == store.DesireDestroyed:
			return fmt.Errorf("machine %s is being destroyed", m.ID)
		case m.Desired == store.DesireStarted && !exited:
			return errStartedAlready
		case !autostarts(m.Config):
			return fmt.Errorf("machine %s has no service with autostart", m.ID)
		}
		m.Desired = store.DesireStarted
		m.Generation++
		m.Reason = fmt.Sprintf("started for a request at the %s edge (autostart)", req.Region)
		if req.From != "" {
			m.Reason = fmt.Sprintf("started for a request at the %s edge (autostart) of host %s", req.Region, req.From)
		}
		m.ReasonGeneration = m.Generation
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, errStartedAlready) {
		return nil
	}
	return err
}

func autostarts(c api.MachineConfig) bool {
	for _, s := range c.Services {
		if s.AutostartOn() {
			return true
		}
	}
	return false
}
