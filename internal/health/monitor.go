package health

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// MonitorConfig says which machine a Monitor checks and where results go.
type MonitorConfig struct {
	// Checks are the machine's checks, named and with ports (MachineChecks).
	Checks []api.Check
	// Host is the machine's private IP.
	Host string
	// Started is when the machine's process started; grace periods count
	// from it. Zero means now.
	Started time.Time
	// Report gets every check's status each time one of them changes
	// (status or output), once all have run once. Calls come from one
	// goroutine, one at a time, so a slow Report delays later results; it
	// must not wait for whoever calls Stop, which waits for it.
	Report func([]api.CheckStatus)
	Log    *slog.Logger
}

// Monitor runs one machine's checks until Stop.
type Monitor struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type probeResult struct {
	i      int
	status string
	output string
	at     time.Time
}

// Start runs cfg's checks, each on its own schedule, until ctx is done or
// Stop is called. A check whose definition is invalid reports critical
// with the reason as its output.
func Start(ctx context.Context, cfg MonitorConfig) *Monitor {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Started.IsZero() {
		cfg.Started = time.Now()
	}
	ctx, cancel := context.WithCancel(ctx)
	m := &Monitor{cancel: cancel}
	results := make(chan probeResult)
	var probes sync.WaitGroup
	for i, c := range cfg.Checks {
		probes.Add(1)
		go func() {
			defer probes.Done()
			run(ctx, i, c, cfg, results)
		}()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		collect(ctx, cfg, results)
		probes.Wait()
	}()
	return m
}

// Stop ends the checks and waits until Report will not be called again.
func (m *Monitor) Stop() {
	m.cancel()
	m.wg.Wait()
}

// run probes one check every interval. While the machine is in the check's
// grace period a failure is only a warning, and a failing check is probed
// again as the grace period ends, so that it turns critical on a fresh
// result rather than a stale one.
func run(ctx context.Context, i int, c api.Check, cfg MonitorConfig, out chan<- probeResult) {
	send := func(r probeResult) bool {
		select {
		case out <- r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	k, err := Parse(c)
	if err != nil {
		send(probeResult{i: i, status: api.CheckCritical, output: "invalid check: " + err.Error(), at: time.Now()})
		return
	}
	graceEnd := cfg.Started.Add(k.GracePeriod)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := k.Probe(ctx, cfg.Host)
		if ctx.Err() != nil {
			return // stopped mid-probe: the result says nothing about the machine
		}
		now := time.Now()
		status := api.CheckPassing
		if !r.OK {
			status = api.CheckCritical
			if now.Before(graceEnd) {
				status = api.CheckWarning
			}
		}
		if !send(probeResult{i: i, status: status, output: r.Output, at: now}) {
			return
		}
		next := k.Interval
		if !r.OK && now.Before(graceEnd) && graceEnd.Sub(now) < next {
			next = graceEnd.Sub(now)
		}
		t.Reset(next)
	}
}

// collect keeps every check's latest status and reports the whole set
// when one changes.
func collect(ctx context.Context, cfg MonitorConfig, results <-chan probeResult) {
	cur := make([]api.CheckStatus, len(cfg.Checks))
	seen := make([]bool, len(cfg.Checks))
	missing := len(cfg.Checks)
	for i, c := range cfg.Checks {
		cur[i].Name = c.Name
	}
	for {
		var r probeResult
		select {
		case <-ctx.Done():
			return
		case r = <-results:
		}
		prev := cur[r.i]
		if seen[r.i] && prev.Status == r.status && prev.Output == r.output {
			continue
		}
		if !seen[r.i] {
			seen[r.i] = true
			missing--
		}
		if prev.Status != r.status {
			cfg.Log.Info("health check changed", "check", prev.Name, "status", r.status, "output", r.output)
		}
		cur[r.i] = api.CheckStatus{Name: prev.Name, Status: r.status, Output: r.output, UpdatedAt: r.at.UTC()}
		if missing == 0 && ctx.Err() == nil {
			cfg.Report(slices.Clone(cur))
		}
	}
}

// Same says whether two sets of results differ only in their times, so a
// host need not write them again.
func Same(a, b []api.CheckStatus) bool {
	return slices.EqualFunc(a, b, func(x, y api.CheckStatus) bool {
		return x.Name == y.Name && x.Status == y.Status && x.Output == y.Output
	})
}

// Critical says whether any check is critical: the machine must leave
// rotation.
func Critical(cs []api.CheckStatus) bool {
	return slices.ContainsFunc(cs, func(c api.CheckStatus) bool { return c.Status == api.CheckCritical })
}
