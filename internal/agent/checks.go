package agent

import (
	"context"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// checkRunner is a worker's health monitor for its started machine. The
// monitor's results pass through a mailbox that keeps only the latest, so
// the monitor never waits for the worker (which may be busy stopping the
// machine, or stopping the monitor itself); the worker goroutine alone
// writes the status, as it does for every other field.
type checkRunner struct {
	mon     *health.Monitor
	seq     int       // which monitor the mailbox's results must come from
	started time.Time // the process start the monitor counts grace from
	gen     int64     // the config generation it checks

	mu     sync.Mutex
	latest []api.CheckStatus
	from   int
	notify chan struct{}
}

func newCheckRunner() *checkRunner { return &checkRunner{notify: make(chan struct{}, 1)} }

// startChecks runs the machine's checks unless they already run for this
// start of its process.
func (w *worker) startChecks(ctx context.Context, spec store.MachineSpec, st perchrt.State) {
	cr := w.checks
	if cr.mon != nil && cr.started.Equal(st.StartedAt) && cr.gen == spec.ConfigGeneration {
		return
	}
	w.stopChecks()
	checks := health.MachineChecks(spec.Config)
	if len(checks) == 0 {
		return
	}
	cr.seq++
	seq := cr.seq
	cr.started, cr.gen = st.StartedAt, spec.ConfigGeneration
	cr.mon = health.Start(ctx, health.MonitorConfig{
		Checks: checks, Host: spec.PrivateIP, Started: st.StartedAt, Log: w.log,
		Report: func(cs []api.CheckStatus) {
			cr.mu.Lock()
			cr.latest, cr.from = cs, seq
			cr.mu.Unlock()
			select {
			case cr.notify <- struct{}{}:
			default:
			}
		},
	})
}

// stopChecks stops the machine's checks; their results are dropped from
// now on.
func (w *worker) stopChecks() {
	if cr := w.checks; cr.mon != nil {
		cr.mon.Stop()
		cr.mon = nil
		cr.seq++
	}
}

// onChecks writes the latest check results to the machine's status, once
// per change: results equal to those stored (say, after an agent restart)
// are not written again.
func (w *worker) onChecks(ctx context.Context) {
	cr := w.checks
	cr.mu.Lock()
	cs, from := cr.latest, cr.from
	cr.mu.Unlock()
	if from != cr.seq || cr.mon == nil || w.status.State != api.StateStarted || health.Same(cs, w.status.Checks) {
		return
	}
	s := w.status
	s.Checks = cs
	spec, _ := w.current()
	s.Ready, s.NotReady = w.readiness(spec, cs)
	s.UpdatedAt = time.Now().UTC()
	w.status = s
	if err := w.a.putStatus(ctx, w.key, s); err != nil && ctx.Err() == nil { // statusq.go
		w.log.Warn("report health checks", "err", err)
	}
}
