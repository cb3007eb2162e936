package agent

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/image"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

// Restart backoff: quick first retries, capped, and a default retry limit
// after which the machine is failed.
const (
	backoffBase       = 250 * time.Millisecond
	backoffMax        = 5 * time.Second
	defaultMaxRetries = 5
	stableRun         = 30 * time.Second // a run this long resets the failure count
)

// worker converges one machine to its spec. All of its state is owned by
// its goroutine; other goroutines only send to its channels.
type worker struct {
	a      *Agent
	id     string
	key    string
	log    *slog.Logger
	notify chan struct{}
	exits  chan waitResult
	done   chan struct{}

	mu      sync.Mutex
	spec    store.MachineSpec
	removed bool

	// Owned by the worker goroutine.
	status    store.MachineStatus
	local     localRecord
	ship      *shipper
	waiting   bool
	waitSeq   int
	heldGen   int64 // a generation the worker decided not to (re)start: exit under policy, or failed
	failures  int
	pending   bool // a restart is scheduled at retryAt
	retryAt   time.Time
	finished  bool
	lastStart time.Time
	checks    *checkRunner
	probe     *portProbe
}

type waitResult struct {
	seq   int
	state perchrt.State
	err   error
}

func (a *Agent) newWorker(ctx context.Context, spec store.MachineSpec) *worker {
	w := &worker{
		a: a, id: spec.ID, key: spec.Key(), spec: spec,
		log:    a.log.With("app", spec.App, "machine", spec.ID),
		notify: make(chan struct{}, 1), exits: make(chan waitResult, 1), done: make(chan struct{}),
		checks: newCheckRunner(), probe: newPortProbe(),
	}
	go w.run(ctx)
	return w
}

func (w *worker) update(spec store.MachineSpec) {
	w.mu.Lock()
	if spec.Generation >= w.spec.Generation {
		w.spec = spec
	}
	w.mu.Unlock()
	w.poke()
}

func (w *worker) remove() {
	w.mu.Lock()
	w.removed = true
	w.mu.Unlock()
	w.poke()
}

func (w *worker) poke() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *worker) wait() { <-w.done }

func (w *worker) current() (store.MachineSpec, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spec, w.removed
}

func (w *worker) run(ctx context.Context) {
	defer close(w.done)
	defer w.stopChecks()
	defer w.stopProbe()
	spec, _ := w.current()
	w.local = loadLocal(w.a.cfg.StateDir, w.id) // before meterObserve, which asks its driver
	if st, _, err := store.Get[store.MachineStatus](ctx, w.a.st.Status, w.key); err == nil {
		w.status = st
		w.meterObserve(spec, st.State) // metering.go
		// A decision taken before an agent restart still holds.
		if st.Generation == spec.Generation && (st.State == api.StateFailed || st.State == api.StateStopped) {
			w.heldGen = st.Generation
		}
	}
	w.ship = w.a.startShipper(spec)
	defer func() {
		if !w.finished {
			w.ship.stop()
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		delay := w.converge(ctx)
		if w.finished {
			w.a.forget(w.key)
			return
		}
		if delay > 0 {
			timer.Reset(delay)
		}
		select {
		case <-ctx.Done():
			return
		case <-w.notify:
		case r := <-w.exits:
			if r.seq != w.waitSeq {
				continue // a waiter of an instance since replaced
			}
			w.waiting = false
			if r.err == nil {
				w.onExit(ctx, r.state)
			}
		case <-timer.C:
		case <-w.checks.notify:
			w.onChecks(ctx)
		case seq := <-w.probe.done:
			w.onProbe(ctx, seq)
		}
	}
}

// converge acts once towards the spec and returns when to look again
// (0: on the next event).
func (w *worker) converge(ctx context.Context) time.Duration {
	spec, removed := w.current()
	if removed {
		w.destroy(ctx, spec, false)
		return 0
	}
	w.signalIfAsked(ctx, spec)
	switch spec.Desired {
	case store.DesireDestroyed:
		w.destroy(ctx, spec, true)
	case store.DesireStopped:
		w.stop(ctx, spec)
	case store.DesireSuspended:
		w.suspend(ctx, spec)
	default:
		return w.ensureStarted(ctx, spec)
	}
	return 0
}

func (w *worker) ensureStarted(ctx context.Context, spec store.MachineSpec) time.Duration {
	if w.heldGen == spec.Generation {
		return 0
	}
	if w.status.Generation != spec.Generation {
		w.failures, w.pending = 0, false // a new start request starts counting afresh
	}
	st, err := w.driver().State(ctx, w.id)
	if w.local.ConfigGeneration != spec.ConfigGeneration || errors.Is(err, perchrt.ErrNotFound) {
		if err := w.create(ctx, spec); err != nil {
			w.fail(ctx, spec, nil, err.Error())
			return 0
		}
		st, err = w.driver().State(ctx, w.id)
	}
	if err != nil {
		w.log.Warn("runtime state", "err", err)
		return time.Second
	}
	switch st.Status {
	case perchrt.StatusRunning:
		w.started(ctx, spec, st)
		return 0
	case perchrt.StatusExited:
		believedRunning := w.status.Generation == spec.Generation && w.status.State == api.StateStarted
		if believedRunning && !w.pending {
			w.onExit(ctx, st) // exited while nobody watched (agent was down)
			return w.untilRetry()
		}
		if w.pending {
			if d := time.Until(w.retryAt); d > 0 {
				return d
			}
		}
	}
	// Created, suspended, or exited with a restart due.
	w.pending = false
	startMsg := ""
	if st.Status == perchrt.StatusSuspended {
		startMsg = "resuming from the snapshot"
	}
	startMsg = because(spec, startMsg) // suspend.go
	w.setState(ctx, spec, api.StateStarting, "start", startMsg)
	w.lastStart = time.Now()
	// A waiter on the last run may still hold that run's exit, already
	// handled by a stop or a restart; it must not end this run.
	w.waiting = false
	w.waitSeq++
	resuming := st.Status == perchrt.StatusSuspended
	// The volumes are mounted again after a stop or a host's reboot.
	if _, err := w.mountVolumes(ctx, spec); err != nil { // volumes.go
		w.fail(ctx, spec, nil, "start: "+err.Error())
		return 0
	}
	err = w.driver().Start(ctx, w.id)
	if errors.Is(err, perchrt.ErrResumeFailed) {
		// The snapshot is gone; the machine boots afresh.
		w.log.Warn("resume failed; booting afresh", "err", err)
		w.setState(ctx, spec, api.StateStarting, "start", "could not resume from the snapshot, booting afresh: "+err.Error())
		resuming = false
		err = w.driver().Start(ctx, w.id)
	}
	if err != nil {
		w.fail(ctx, spec, nil, "start: "+err.Error())
		return 0
	}
	if resuming {
		w.log.Info("machine resumed from its snapshot", "took", time.Since(w.lastStart).Round(time.Millisecond))
	}
	st, err = w.driver().State(ctx, w.id)
	if err != nil {
		return time.Second
	}
	if st.Status == perchrt.StatusRunning {
		w.started(ctx, spec, st)
		return 0
	}
	w.onExit(ctx, st)
	return w.untilRetry()
}

// signalIfAsked sends the running process the signal the spec asks for,
// once per SignalSeq (POST .../signal), and reports it as an event.
func (w *worker) signalIfAsked(ctx context.Context, spec store.MachineSpec) {
	if spec.SignalSeq <= w.local.SignalSeq {
		return
	}
	w.local.SignalSeq = spec.SignalSeq
	if err := saveLocal(w.a.cfg.StateDir, w.id, w.local); err != nil {
		w.log.Warn("save machine record", "err", err)
	}
	sd, ok := w.driver().(perchrt.Signaler)
	st, err := w.driver().State(ctx, w.id)
	if !ok || err != nil || st.Status != perchrt.StatusRunning || w.status.State != api.StateStarted || w.status.Generation != spec.Generation {
		w.log.Info("signal not sent: the machine is not running", "signal", spec.Signal)
		return
	}
	sig := parseSignal(spec.Signal)
	if err := sd.Signal(ctx, w.id, sig); err != nil {
		w.log.Warn("signal", "signal", spec.Signal, "err", err)
		return
	}
	w.setState(ctx, spec, api.StateStarted, "signal", "sent "+signalName(sig))
}

func (w *worker) untilRetry() time.Duration {
	if !w.pending {
		return 0
	}
	if d := time.Until(w.retryAt); d > 0 {
		return d
	}
	return time.Millisecond
}

func (w *worker) started(ctx context.Context, spec store.MachineSpec, st perchrt.State) {
	w.startProbe(ctx, spec, st)
	if w.status.State != api.StateStarted || w.status.Generation != spec.Generation {
		w.setState(ctx, spec, api.StateStarted, "start", "", func(s *store.MachineStatus) {
			s.StartedAt = st.StartedAt
			s.ExitCode = nil
			s.OOMKilled = false
			s.LastLogs = nil
			// Checks restart with the process; until they report, the
			// machine waits for them.
			s.Ready, s.NotReady = w.readiness(spec, nil)
		})
	}
	w.startChecks(ctx, spec, st)
	if !w.waiting {
		w.waiting = true
		w.waitSeq++
		seq := w.waitSeq
		go func() {
			s, err := w.driver().Wait(ctx, w.id)
			select {
			case w.exits <- waitResult{seq, s, err}:
			case <-ctx.Done():
			}
		}()
	}
}

// onExit applies the restart policy to a process that exited.
func (w *worker) onExit(ctx context.Context, st perchrt.State) {
	if st.Status == perchrt.StatusSuspended {
		return // not an exit: the worker suspended it
	}
	spec, _ := w.current()
	if spec.Desired != store.DesireStarted || w.heldGen == spec.Generation || w.pending {
		return
	}
	code := st.ExitCode
	policy := spec.Config.Restart.Policy
	w.log.Info("machine exited", "exit_code", code, "oom_killed", st.OOMKilled, "policy", policy)
	restart := policy == api.RestartAlways || (policy != api.RestartNo && code != 0)
	exited := fmt.Sprintf("exited with code %d", code)
	if st.OOMKilled {
		exited = fmt.Sprintf("out of memory: killed at its limit of %d MB", cmp.Or(spec.Config.Guest.MemoryMB, scheduler.DefaultMemoryMB))
	}
	oom := func(s *store.MachineStatus) {
		s.OOMKilled = st.OOMKilled
		s.Events[len(s.Events)-1].OOMKilled = st.OOMKilled
	}
	if !restart {
		w.heldGen = spec.Generation
		w.setState(ctx, spec, api.StateStopped, "exit", exited, func(s *store.MachineStatus) {
			s.ExitCode = &code
		}, oom)
		return
	}
	if !w.lastStart.IsZero() && time.Since(w.lastStart) > stableRun {
		w.failures = 0
	}
	w.failures++
	max := spec.Config.Restart.MaxRetries
	if max == 0 {
		max = defaultMaxRetries
	}
	if w.failures > max {
		w.fail(ctx, spec, &code, fmt.Sprintf("%s; restarted %d times, giving up (restart policy %s)", exited, max, policy), oom)
		return
	}
	delay := backoffBase << (w.failures - 1)
	if delay > backoffMax {
		delay = backoffMax
	}
	w.pending, w.retryAt = true, time.Now().Add(delay)
	last := w.ship.lastLines()
	w.setState(ctx, spec, api.StateStarting, "exit", fmt.Sprintf("%s; restarting in %s (attempt %d of %d)", exited, delay, w.failures, max), oom, func(s *store.MachineStatus) {
		s.ExitCode = &code
		s.Restarts++
		// What it printed before it exited: a deploy reports it.
		s.LastLogs = last
		s.NotReady = fmt.Sprintf("restarting: exited %d, attempt %d of %d", code, w.failures, max)
	})
}

func (w *worker) fail(ctx context.Context, spec store.MachineSpec, code *int, msg string, mut ...func(*store.MachineStatus)) {
	w.heldGen = spec.Generation
	w.pending = false
	w.log.Warn("machine failed", "reason", msg)
	last := w.ship.lastLines()
	w.setState(ctx, spec, api.StateFailed, "exit", msg, func(s *store.MachineStatus) {
		if code != nil {
			s.ExitCode = code
		}
		s.LastLogs = last
		for _, m := range mut {
			m(s)
		}
	})
}

// create pulls the image and makes a fresh runtime instance of the spec.
func (w *worker) create(ctx context.Context, spec store.MachineSpec) error {
	w.a.creating.RLock()
	defer w.a.creating.RUnlock()
	defer w.a.kickImageGC()
	w.setState(ctx, spec, api.StateStarting, "launch", "pulling "+spec.Config.Image)
	img, err := w.a.images.Pull(ctx, spec.Config.Image, w.a.pull)
	if err != nil {
		if errors.Is(err, image.ErrImageNotFound) || errors.Is(err, image.ErrUnauthorized) || errors.Is(err, image.ErrLimit) {
			return err // says which image, which registry or limit, and what to do
		}
		return fmt.Errorf("pull %s: %w", spec.Config.Image, err)
	}
	if len(spec.Config.Statics) > 0 {
		if err := w.a.statics.prepare(img, spec.Config.Statics); err != nil { // statics.go
			return err
		}
	}
	rs, err := w.a.runtimeSpec(spec, img.Rootfs, img.Config)
	if err != nil {
		return err
	}
	rs.Layers = img.Layers
	// A process of the previous config still running (a machine updated in
	// place) is drained and stopped as its old config says, not killed.
	if st, err := w.driver().State(ctx, w.id); err == nil && st.Status == perchrt.StatusRunning {
		old := spec
		old.Config.StopConfig = w.local.Stop
		w.retire(ctx, old, api.StateStarting, "update")
	}
	if err := w.a.destroyEverywhere(ctx, w.id); err != nil {
		return fmt.Errorf("remove previous instance: %w", err)
	}
	// Mounted afresh: an extend that could not grow the filesystem
	// online (Extend's online false) takes effect now.
	w.releaseVolumes(ctx)
	if rs.Mounts, err = w.mountVolumes(ctx, spec); err != nil { // volumes.go
		return err
	}
	drv := w.a.driverNamed(spec.Config.Guest.Runtime)
	if err := drv.Create(ctx, rs); err != nil {
		return fmt.Errorf("create machine: %w", err)
	}
	w.local.Runtime = drv.Name()
	w.waiting = false
	w.waitSeq++ // results of waiters on the old instance are stale now
	w.local.ConfigGeneration = spec.ConfigGeneration
	w.local.Stop = spec.Config.StopConfig
	w.local.ImageRef = img.Ref
	w.local.InstanceID = cmp.Or(spec.InstanceID, newInstanceID()) // the server names it; older specs have none
	if err := saveLocal(w.a.cfg.StateDir, w.id, w.local); err != nil {
		return fmt.Errorf("save machine record: %w", err)
	}
	return nil
}

func (w *worker) stop(ctx context.Context, spec store.MachineSpec) {
	w.pending = false
	st, err := w.driver().State(ctx, w.id)
	if err == nil && st.Status == perchrt.StatusRunning {
		w.retire(ctx, spec, api.StateStopping, "stop")
	}
	if err == nil && st.Status == perchrt.StatusSuspended {
		w.discardSnapshot(ctx) // stopped means the next start boots
	}
	if err == nil && st.Status == perchrt.StatusExited {
		// Exited by itself, maybe with its shim killed: the runtime lets
		// go of what that shim left holding the volumes (runc's idmapped
		// binds) before they are unmounted.
		if serr := w.driver().Stop(ctx, w.id, syscall.SIGKILL, 0); serr != nil {
			w.log.Warn("stop an exited machine", "err", serr)
		}
	}
	if err == nil && st.Status != perchrt.StatusSuspended {
		w.releaseVolumes(ctx) // volumes.go; a suspended machine resumes on its mounts
	}
	if w.status.State != api.StateStopped || w.status.Generation != spec.Generation {
		w.setState(ctx, spec, api.StateStopped, "stop", spec.Why())
	}
}

func (w *worker) destroy(ctx context.Context, spec store.MachineSpec, report bool) {
	if report && !spec.Force && w.status.State != api.StateDestroying {
		if st, err := w.driver().State(ctx, w.id); err == nil && st.Status == perchrt.StatusRunning {
			w.retire(ctx, spec, api.StateDestroying, "destroy")
		}
	}
	if report {
		w.setState(ctx, spec, api.StateDestroying, "destroy", "")
	}
	w.ship.stop()
	if err := w.a.destroyEverywhere(ctx, w.id); err != nil {
		w.log.Warn("destroy", "err", err)
		if report {
			w.setState(ctx, spec, api.StateDestroying, "destroy", "destroy failed, retrying: "+err.Error())
		}
		w.ship = w.a.startShipper(spec)
		return
	}
	_ = hostnet.Detach(w.id)
	w.releaseVolumes(ctx) // volumes.go: unmounted, never destroyed
	removeLocal(w.a.cfg.StateDir, w.id)
	removeOffsets(w.a.cfg.StateDir, w.id)
	if report {
		w.setState(ctx, spec, api.StateDestroyed, "destroy", "")
		_ = store.Delete(ctx, w.a.st.Machines, w.key)
		w.a.dropStatus(w.key) // statusq.go
		_ = store.Delete(ctx, w.a.st.Status, w.key)
	}
	w.finished = true
	w.log.Info("machine destroyed")
	w.a.kickImageGC()
}

func (w *worker) setState(ctx context.Context, spec store.MachineSpec, state, evType, msg string, mut ...func(*store.MachineStatus)) {
	s := w.status
	s.ID, s.App, s.HostID = spec.ID, spec.App, spec.HostID
	s.State, s.Generation = state, spec.Generation
	s.InstanceID, s.ImageRef = w.local.InstanceID, w.local.ImageRef
	s.UpdatedAt = time.Now().UTC()
	if state != api.StateStarted {
		w.stopChecks() // checks are about a running process
		w.stopProbe()
		s.Checks = nil
		s.Ready, s.NotReady = false, state
	}
	s.Events = append([]api.Event(nil), s.Events...)
	s.AddEvent(api.Event{Type: evType, Status: state, Source: "host", Timestamp: s.UpdatedAt.UnixMilli(), Message: msg})
	for _, m := range mut {
		m(&s)
	}
	if state == api.StateFailed || state == api.StateStopped {
		s.Events[len(s.Events)-1].ExitCode = s.ExitCode
	}
	w.status = s
	w.meterObserve(spec, state) // metering.go
	// statusq.go: queued while the control plane is out of reach
	if err := w.a.putStatus(ctx, w.key, s); err != nil && ctx.Err() == nil {
		w.log.Warn("report state", "state", state, "err", err)
	}
	w.log.Debug("state", "state", state, "generation", spec.Generation, "msg", msg)
}

// driver is the runtime the machine's current instance was created in.
func (w *worker) driver() perchrt.Driver { return w.a.driverNamed(w.local.Runtime) }

func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return strings.ToUpper(hex.EncodeToString(b))
}

func parseSignal(s string) syscall.Signal {
	switch strings.TrimPrefix(strings.ToUpper(s), "SIG") {
	case "INT":
		return syscall.SIGINT
	case "QUIT":
		return syscall.SIGQUIT
	case "KILL":
		return syscall.SIGKILL
	case "HUP":
		return syscall.SIGHUP
	case "USR1":
		return syscall.SIGUSR1
	case "USR2":
		return syscall.SIGUSR2
	}
	return syscall.SIGTERM
}
