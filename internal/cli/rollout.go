package cli

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
)

// A rollout replaces an app's machines with machines of a new release
// without dropping a request and without leaving a broken release behind:
//
//   - New machines come first. Each must become ready (its checks pass, or
//     its ports listen: the edges send it nothing before) and then stay up,
//     not exiting, restarting or failing a check, for the smoke window.
//   - Old machines are retired only after their replacements passed: each
//     is stopped, which makes its host drain it (the edges stop sending it
//     requests and let those in flight finish) before its kill_signal.
//     They stay stopped until the whole deploy succeeded, then are
//     destroyed.
//   - If any new machine fails, the rollout is undone: retired machines are
//     started again, every new machine is drained and destroyed, and the
//     app is as it was.
//
// Strategies, as Fly documents them: rolling (default) replaces the
// machines of one region after another, max_unavailable at a time, each
// new batch out of rotation until its smoke window passed;
// immediate starts every new machine at once and retires every old one
// once they are ready; canary replaces one machine first, then rolls;
// bluegreen starts a full new set out of rotation (cordoned), waits until
// all passed, switches traffic to it at once and retires the old set.

// Strategies.
const (
	strategyRolling   = "rolling"
	strategyImmediate = "immediate"
	strategyCanary    = "canary"
	strategyBlueGreen = "bluegreen"
)

// deployOptions tune a rollout.
type deployOptions struct {
	Strategy string
	// MaxUnavailable is how many machines of a region a rolling deploy
	// replaces at once: a count (>= 1) or a fraction (< 1); 0 means 1.
	MaxUnavailable float64
	// WaitTimeout bounds the wait for each new machine: ready, then up
	// for the whole smoke window.
	WaitTimeout time.Duration
	// Smoke is how long a ready machine must stay up; 0 skips the check.
	Smoke time.Duration
}

func (o deployOptions) check() error {
	switch o.Strategy {
	case "", strategyRolling, strategyImmediate, strategyCanary, strategyBlueGreen:
	default:
		return fmt.Errorf("strategy %q is not known; use rolling, immediate, canary or bluegreen", o.Strategy)
	}
	if o.MaxUnavailable < 0 || (o.MaxUnavailable > 1 && o.MaxUnavailable != math.Trunc(o.MaxUnavailable)) {
		return fmt.Errorf("max-unavailable must be a number of machines (1 or more) or a fraction of them (e.g. 0.33), got %g", o.MaxUnavailable)
	}
	if o.Smoke < 0 {
		return fmt.Errorf("smoke window must not be negative, got %s", o.Smoke)
	}
	if o.Smoke > 0 && o.WaitTimeout <= o.Smoke {
		return fmt.Errorf("wait timeout (%s) must be longer than the smoke window (%s): a machine needs time to get ready before it is watched", o.WaitTimeout, o.Smoke)
	}
	return nil
}

// batchSize is how many of n machines a rolling deploy replaces at once.
func batchSize(maxUnavailable float64, n int) int {
	switch {
	case maxUnavailable <= 0:
		return 1
	case maxUnavailable < 1:
		return max(1, int(math.Ceil(maxUnavailable*float64(n))))
	}
	return max(1, int(maxUnavailable))
}

// awaitPoll is how often a rollout looks at the machines it waits for.
const awaitPoll = 250 * time.Millisecond

// rollout is one deploy in progress: what it created and retired, so that
// it can be finished or undone.
type rollout struct {
	d  *deployer
	mc api.MachineConfig
	// mcs is the config of each process group; a group not in it (or a
	// nil mcs) gets mc.
	mcs map[string]api.MachineConfig

	mu      sync.Mutex
	created []api.Machine // new machines
	retired []api.Machine // old machines stopped (or not running) on the way out
	updated []api.Machine // machines with a volume replaced in place, as they were (volumes.go)
	claimed map[string]bool
}

// regionOld is a region's machines of one process group to replace,
// oldest first; none for a region that gets the group's first machine.
type regionOld struct {
	Region string
	Group  string
	Old    []api.Machine
}

// label names a region and, for any group but the default, the group:
// "iad", "iad worker".
func (g regionOld) label() string { return groupLabel(g.Region, g.Group) }

func groupLabel(region, group string) string {
	if group == "" || group == config.DefaultProcessGroup {
		return region
	}
	return region + " " + group
}

// groups turns the plan's steps into regions with the machines they replace.
func groups(plan deployPlan, existing []api.Machine) []regionOld {
	byID := map[string]api.Machine{}
	for _, m := range existing {
		byID[m.ID] = m
	}
	var out []regionOld
	for _, st := range plan.Steps {
		if len(out) == 0 || out[len(out)-1].Region != st.Region || out[len(out)-1].Group != st.Group {
			out = append(out, regionOld{Region: st.Region, Group: st.Group})
		}
		if st.Replace != "" {
			g := &out[len(out)-1]
			g.Old = append(g.Old, byID[st.Replace])
		}
	}
	return out
}

// execute runs the strategy. On error the caller undoes the rollout.
func (r *rollout) execute(ctx context.Context, gs []regionOld) error {
	if r.mountsVolumes() {
		return r.inPlace(ctx, gs) // volumes.go
	}
	return r.byStrategy(ctx, gs)
}

// byStrategy rolls gs, machines without a volume, by the deploy's strategy.
func (r *rollout) byStrategy(ctx context.Context, gs []regionOld) error {
	switch r.d.opts.Strategy {
	case strategyImmediate:
		return r.all(ctx, gs, false)
	case strategyBlueGreen:
		return r.all(ctx, gs, true)
	case strategyCanary:
		return r.rolling(ctx, gs, true)
	}
	return r.rolling(ctx, gs, false)
}

// rolling replaces region after region, a batch at a time; with canary the
// very first batch is one machine.
func (r *rollout) rolling(ctx context.Context, gs []regionOld, canary bool) error {
	for _, g := range gs {
		n := max(len(g.Old), 1)
		batch := batchSize(r.d.opts.MaxUnavailable, n)
		for i := 0; i < n; {
			k := min(batch, n-i)
			// New machines sit out of rotation (cordoned) through their
			// smoke window: a release that crashes in it must not take
			// requests down with it. A canary is the exception, by
			// definition: it serves live traffic while it is watched.
			hold := r.d.opts.Smoke > 0
			if canary {
				k, canary, hold = 1, false, false
				fmt.Fprintf(r.d.out, "%s: canary: one new machine first, taking live traffic while it is watched\n", g.label())
			}
			news, err := r.launch(ctx, g.Region, g.Group, k, hold)
			if err != nil {
				return err
			}
			if err := r.await(ctx, news, r.d.opts.Smoke); err != nil {
				return err
			}
			if hold {
				if err := r.admit(ctx, news); err != nil {
					return err
				}
			}
			if i < len(g.Old) {
				if err := r.retire(ctx, g.Old[i:min(i+k, len(g.Old))]); err != nil {
					return err
				}
			}
			i += k
		}
		fmt.Fprintf(r.d.out, "%s: %s\n", g.label(), summary(len(g.Old), n))
	}
	return nil
}

// all starts every new machine at once. immediate waits only until they
// are ready; bluegreen keeps them cordoned, smoke-checks them, then
// switches traffic to them at once. Either then retires every old one.
func (r *rollout) all(ctx context.Context, gs []regionOld, blueGreen bool) error {
	var news []api.Machine
	for _, g := range gs {
		ms, err := r.launch(ctx, g.Region, g.Group, max(len(g.Old), 1), blueGreen)
		if err != nil {
			return err
		}
		news = append(news, ms...)
	}
	smoke := time.Duration(0)
	if blueGreen {
		smoke = r.d.opts.Smoke
	}
	if err := r.await(ctx, news, smoke); err != nil {
		return err
	}
	if blueGreen {
		if err := r.admit(ctx, news); err != nil {
			return err
		}
		fmt.Fprintf(r.d.out, "traffic switched to the %s\n", plural(len(news), "new machine"))
	}
	var olds []api.Machine
	for _, g := range gs {
		olds = append(olds, g.Old...)
	}
	if err := r.retire(ctx, olds); err != nil {
		return err
	}
	for _, g := range gs {
		fmt.Fprintf(r.d.out, "%s: %s\n", g.label(), summary(len(g.Old), max(len(g.Old), 1)))
	}
	return nil
}

func summary(old, n int) string {
	if old == 0 {
		return "created " + plural(n, "machine")
	}
	return "replaced " + plural(old, "machine")
}

// configFor is the release's machine config of a process group.
func (r *rollout) configFor(group string) api.MachineConfig {
	if mc, ok := r.mcs[group]; ok {
		return mc
	}
	return r.mc
}

// launch creates k machines of the release's process group in region.
func (r *rollout) launch(ctx context.Context, region, group string, k int, cordoned bool) ([]api.Machine, error) {
	mc := r.configFor(group)
	var out []api.Machine
	for range k {
		mc := mc
		if len(mc.Mounts) > 0 { // its own volume (volumes.go)
			var err error
			if mc, err = r.withVolume(ctx, region, mc, nil); err != nil {
				return out, err
			}
		}
		m, err := r.d.c.CreateMachine(ctx, r.d.app, api.CreateMachineRequest{Region: region, Config: mc, Cordoned: cordoned})
		if err != nil {
			return out, fmt.Errorf("creating a machine in %s: %w", groupLabel(region, group), err)
		}
		r.mu.Lock()
		r.created = append(r.created, *m)
		r.mu.Unlock()
		fmt.Fprintf(r.d.out, "%s: machine %s created\n", groupLabel(region, group), m.ID)
		out = append(out, *m)
	}
	return out, nil
}

// machineFailure is a new machine that did not pass, with what the user
// needs to see.
type machineFailure struct {
	m      api.Machine
	reason string
}

func (f *machineFailure) Error() string {
	return fmt.Sprintf("machine %s in %s %s", f.m.ID, f.m.Region, f.reason)
}

// await waits until every machine is ready and then up for smoke, within
// the wait timeout of each. A machine that exits, restarts, fails or
// fails a check meanwhile fails the wait.
func (r *rollout) await(ctx context.Context, ms []api.Machine, smoke time.Duration) error {
	start := time.Now()
	readyAt := map[string]time.Time{}
	left := map[string]api.Machine{}
	for _, m := range ms {
		left[m.ID] = m
	}
	tick := time.NewTicker(awaitPoll)
	defer tick.Stop()
	for len(left) > 0 {
		for id, m0 := range left {
			m, err := r.d.c.GetMachine(ctx, r.d.app, id)
			if err != nil {
				return fmt.Errorf("watching machine %s: %w", id, err)
			}
			if why := unstable(m, m0); why != "" {
				return &machineFailure{m: *m, reason: why}
			}
			switch at, seen := readyAt[id]; {
			case m.Ready && !seen:
				readyAt[id] = time.Now()
				msg := fmt.Sprintf("%s: machine %s ready (%.1fs)", groupLabel(m.Region, processGroup(*m)), id, time.Since(start).Seconds())
				if smoke > 0 {
					msg += fmt.Sprintf("; watching it for %s", smoke)
				}
				fmt.Fprintln(r.d.out, msg)
				if smoke == 0 {
					delete(left, id)
				}
			case m.Ready && time.Since(at) >= smoke:
				fmt.Fprintf(r.d.out, "%s: machine %s passed its smoke check\n", groupLabel(m.Region, processGroup(*m)), id)
				delete(left, id)
			case !m.Ready && seen:
				return &machineFailure{m: *m, reason: "stopped being ready: " + notReady(m)}
			case time.Since(start) > r.d.opts.WaitTimeout:
				if !m.Ready {
					return &machineFailure{m: *m, reason: fmt.Sprintf("was not ready after %s: %s", r.d.opts.WaitTimeout, notReady(m))}
				}
				return &machineFailure{m: *m, reason: fmt.Sprintf("did not stay up for the %s smoke window within %s", smoke, r.d.opts.WaitTimeout)}
			}
		}
		if len(left) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// unstable says what went wrong with a new machine, "" if nothing yet.
func unstable(m *api.Machine, created api.Machine) string {
	switch m.State {
	case api.StateFailed:
		return "failed" + exitNote(m) + failedBecause(m)
	case api.StateStopped:
		return "exited" + exitNote(m)
	case api.StateDestroying, api.StateDestroyed:
		return "was destroyed while the deploy waited for it"
	}
	if m.Restarts > created.Restarts {
		return "restarted" + exitNote(m)
	}
	// A check is critical only after its grace period: the machine is
	// up and failing it.
	for _, c := range m.Checks {
		if c.Status == api.CheckCritical && m.State == api.StateStarted {
			return fmt.Sprintf("failed health check %s (critical): %s", c.Name, firstLine(c.Output))
		}
	}
	return ""
}

// failedBecause is what the host said when it gave the machine up (an
// image it could not pull, a restart limit), as ": reason".
func failedBecause(m *api.Machine) string {
	for _, e := range m.Events { // the latest first, as Fly orders them
		if e.Status == api.StateFailed && e.Message != "" {
			return ": " + e.Message
		}
	}
	return ""
}

func exitNote(m *api.Machine) string {
	if m.ExitCode != nil {
		return fmt.Sprintf(" (exit code %d)", *m.ExitCode)
	}
	return ""
}

func notReady(m *api.Machine) string {
	if m.NotReady != "" {
		return m.NotReady
	}
	return m.State
}

func firstLine(s string) string {
	first, _, _ := strings.Cut(s, "\n")
	return first
}

// admit puts new machines that passed out of rotation into it: each edge
// learns of it through its watch, and the old machines are drained only
// once the new ones read back as routable.
func (r *rollout) admit(ctx context.Context, news []api.Machine) error {
	if err := parallel(news, func(m api.Machine) error { return r.d.c.UncordonMachine(ctx, r.d.app, m.ID) }); err != nil {
		return fmt.Errorf("switching traffic to the new machines: %w", err)
	}
	return r.awaitRouted(ctx, news)
}

// awaitRouted waits until the uncordoned machines read back as routable.
func (r *rollout) awaitRouted(ctx context.Context, ms []api.Machine) error {
	for _, m := range ms {
		got, err := r.d.c.GetMachine(ctx, r.d.app, m.ID)
		if err != nil {
			return fmt.Errorf("watching machine %s: %w", m.ID, err)
		}
		if got.Cordoned || !got.Ready {
			return &machineFailure{m: *got, reason: "is not taking traffic after the switch: " + notReady(got)}
		}
	}
	return nil
}

// retire stops old machines, which their hosts drain first, and keeps
// them stopped until the rollout is finished or undone.
func (r *rollout) retire(ctx context.Context, olds []api.Machine) error {
	return parallel(olds, func(m api.Machine) error {
		r.mu.Lock()
		r.retired = append(r.retired, m)
		r.mu.Unlock()
		if m.State != api.StateStarted && m.State != api.StateStarting {
			return nil
		}
		if err := stopAndWait(ctx, r.d.c, r.d.app, m); err != nil {
			return fmt.Errorf("retiring old machine %s: %w", m.ID, err)
		}
		fmt.Fprintf(r.d.out, "%s: old machine %s drained and stopped\n", m.Region, m.ID)
		return nil
	})
}

// stopAndWait stops a machine (its host drains it, then gives it its stop
// signal and timeout) and waits until it is stopped.
func stopAndWait(ctx context.Context, c *api.Client, app string, m api.Machine) error {
	if err := c.StopMachine(ctx, app, m.ID, nil); err != nil {
		return err
	}
	return c.WaitMachine(ctx, app, m.ID, api.StateStopped, stopWait(m.Config))
}

// stopWait is how long stopping a machine may take: the drain and the
// stop timeout are each at most the stop timeout.
func stopWait(c api.MachineConfig) time.Duration {
	t := api.DefaultStopTimeout
	if c.StopConfig != nil && c.StopConfig.Timeout != "" {
		if d, err := time.ParseDuration(c.StopConfig.Timeout); err == nil && d > 0 {
			t = d
		}
	}
	return min(2*t+15*time.Second, 10*time.Minute)
}

// finish destroys the retired machines of a rollout that succeeded.
func (r *rollout) finish(ctx context.Context) {
	_ = parallel(r.retired, func(m api.Machine) error {
		if err := r.d.c.DestroyMachine(ctx, r.d.app, m.ID, false); err != nil {
			fmt.Fprintf(r.d.out, "%s: could not destroy the stopped old machine %s: %v; remove it with `perch machine destroy %s`\n", m.Region, m.ID, err, m.ID)
			return nil
		}
		fmt.Fprintf(r.d.out, "%s: destroyed old machine %s\n", m.Region, m.ID)
		return nil
	})
}

// undo puts the app back as it was: retired machines started again, new
// machines drained and destroyed. It runs even after an interrupt.
func (r *rollout) undo(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	r.undoInPlace(ctx) // volumes.go
	var restart []api.Machine
	for _, m := range r.retired {
		if m.State == api.StateStarted || m.State == api.StateStarting {
			restart = append(restart, m)
		}
	}
	if len(restart) > 0 {
		_ = parallel(restart, func(m api.Machine) error {
			if err := r.d.c.StartMachine(ctx, r.d.app, m.ID); err != nil {
				fmt.Fprintf(r.d.out, "%s: could not start the old machine %s again: %v; start it with `perch machine start %s`\n", m.Region, m.ID, err, m.ID)
				return nil
			}
			fmt.Fprintf(r.d.out, "%s: old machine %s started again\n", m.Region, m.ID)
			return nil
		})
		saved := r.d.opts
		r.d.opts.WaitTimeout = 2 * time.Minute
		if err := r.await(ctx, restart, 0); err != nil {
			fmt.Fprintf(r.d.out, "warning: an old machine is not ready again: %v\n", err)
		}
		r.d.opts = saved
	}
	_ = parallel(r.created, func(m api.Machine) error {
		// A new machine that took traffic is drained like any other; one
		// that never got ready had none and goes at once.
		var err error
		if cur, gerr := r.d.c.GetMachine(ctx, r.d.app, m.ID); gerr == nil && cur.State == api.StateStarted && (cur.Ready || cur.Cordoned) {
			if err = stopAndWait(ctx, r.d.c, r.d.app, *cur); err == nil {
				err = r.d.c.DestroyMachine(ctx, r.d.app, m.ID, false)
			}
		} else {
			err = errors.New("not ready")
		}
		if err != nil {
			err = r.d.c.DestroyMachine(ctx, r.d.app, m.ID, true)
		}
		if err != nil {
			fmt.Fprintf(r.d.out, "%s: could not destroy the new machine %s: %v; remove it with `perch machine destroy --force %s`\n", m.Region, m.ID, err, m.ID)
			return nil
		}
		fmt.Fprintf(r.d.out, "%s: destroyed the new machine %s\n", m.Region, m.ID)
		return nil
	})
}

// parallel runs fn for every machine at once and returns the first error.
func parallel(ms []api.Machine, fn func(api.Machine) error) error {
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Go(func() { errs[i] = fn(m) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
