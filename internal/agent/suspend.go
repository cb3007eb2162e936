package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/perchhq/perch/internal/api"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// Suspending a machine (docs/suspend.md): its host drains it exactly as
// for a stop (drain.go), then has the runtime snapshot it
// (runtime.Suspender) and reports it suspended. Starting it again resumes
// it from the snapshot; a new config (a deploy) recreates it, which
// discards the snapshot; a stop discards it too. A machine whose runtime
// cannot snapshot it (CRIU fails, memory over api.MaxSuspendMemoryMB, a
// driver without Suspender) is stopped instead, with an event saying why.

// suspendable says why the machine cannot be suspended, or "" if it can.
func (w *worker) suspendable(spec store.MachineSpec) string {
	if mb := spec.Config.Guest.MemoryMB; mb > api.MaxSuspendMemoryMB {
		return fmt.Sprintf("the machine has %d MB of memory; only machines with at most %d MB can be suspended", mb, api.MaxSuspendMemoryMB)
	}
	if _, ok := w.driver().(perchrt.Suspender); !ok {
		return fmt.Sprintf("runtime %s cannot suspend machines", w.driver().Name())
	}
	return ""
}

// suspendForIdle is autostop's way to suspend an idle machine instead of
// stopping it (autostop.go). It may run outside the worker's goroutine: it
// only checks that the machine can be suspended and asks for it in the
// spec (desired suspended, with reason for the event); the worker then
// drains and suspends it, or stops it with an event saying why when the
// snapshot fails. It returns false with the reason when the machine cannot
// be suspended (the caller stops it), and an error when the spec could not
// be written (the caller tries again later).
func (w *worker) suspendForIdle(ctx context.Context, reason string) (suspended bool, why string, err error) {
	spec, removed := w.current()
	if removed || spec.Desired != store.DesireStarted {
		return false, "", errSpecChanged
	}
	if why := w.suspendable(spec); why != "" {
		return false, why, nil
	}
	if err := w.desireIdle(ctx, store.DesireSuspended, reason); err != nil {
		return false, "", err
	}
	return true, "", nil
}

// suspend converges the machine to suspended: drain, snapshot, report.
func (w *worker) suspend(ctx context.Context, spec store.MachineSpec) {
	w.pending = false
	st, err := w.driver().State(ctx, w.id)
	if err != nil && !errors.Is(err, perchrt.ErrNotFound) {
		w.log.Warn("runtime state", "err", err)
		return
	}
	switch {
	case err == nil && st.Status == perchrt.StatusSuspended:
		if w.status.State != api.StateSuspended || w.status.Generation != spec.Generation {
			w.setState(ctx, spec, api.StateSuspended, "suspend", "")
		}
		return
	case err != nil || st.Status != perchrt.StatusRunning:
		// Nothing runs to snapshot (it exited meanwhile): it is stopped.
		if w.status.State != api.StateStopped || w.status.Generation != spec.Generation {
			w.setState(ctx, spec, api.StateStopped, "suspend", "the machine was not running; nothing to suspend")
		}
		return
	}
	if why := w.suspendable(spec); why != "" {
		w.stopInstead(ctx, spec, why)
		return
	}
	_, _, timeout := stopConfig(spec)
	w.setState(ctx, spec, api.StateSuspending, "suspend", because(spec, fmt.Sprintf("draining (up to %s), then suspending", timeout)), func(s *store.MachineStatus) {
		s.NotReady = api.StateSuspending + ": draining"
	})
	start := time.Now()
	w.a.drain(ctx, spec.App, spec.ID, timeout)
	drained := time.Since(start)
	err = w.driver().(perchrt.Suspender).Suspend(ctx, w.id)
	if err != nil {
		w.log.Warn("suspend failed; stopping instead", "err", err)
		w.stopInstead(ctx, spec, err.Error())
		return
	}
	w.log.Info("machine suspended", "drain", drained.Round(time.Millisecond), "snapshot", (time.Since(start) - drained).Round(time.Millisecond))
	w.setState(ctx, spec, api.StateSuspended, "suspend", because(spec, fmt.Sprintf("snapshot taken in %s", (time.Since(start)-drained).Round(time.Millisecond))))
}

// stopInstead stops a machine that was to be suspended and could not be,
// saying why in its event.
func (w *worker) stopInstead(ctx context.Context, spec store.MachineSpec, why string) {
	if st, err := w.driver().State(ctx, w.id); err == nil && st.Status == perchrt.StatusRunning {
		w.retire(ctx, spec, api.StateStopping, "suspend")
	}
	w.setState(ctx, spec, api.StateStopped, "suspend", because(spec, "could not suspend, stopped instead: "+why))
}

// discardSnapshot drops the machine's snapshot, if its runtime keeps one,
// so that its next start boots it afresh.
func (w *worker) discardSnapshot(ctx context.Context) {
	if s, ok := w.driver().(perchrt.Suspender); ok {
		if err := s.DiscardSnapshot(ctx, w.id); err != nil {
			w.log.Warn("discarding the snapshot", "err", err)
		}
	}
}

// because puts the reason the spec records for its generation (autostop,
// autostart) before msg, for the machine's event.
func because(spec store.MachineSpec, msg string) string {
	why := spec.Why()
	switch {
	case why == "":
		return msg
	case msg == "":
		return why
	}
	return why + "; " + msg
}
