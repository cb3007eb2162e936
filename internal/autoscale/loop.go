package autoscale

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Cluster is what the loop needs of the control plane: machines are
// created and destroyed the way the API does it (placement, drain).
type Cluster interface {
	// Machines lists app's machines that are not being destroyed.
	Machines(ctx context.Context, app string) ([]api.Machine, error)
	// HostRegions lists the regions with a host that is up.
	HostRegions(ctx context.Context) ([]string, error)
	CreateMachine(ctx context.Context, app, region string, cfg api.MachineConfig) (api.Machine, error)
	// DestroyMachine drains and destroys a machine.
	DestroyMachine(ctx context.Context, app, id string) error
}

// Limiter is asked before each machine the autoscaler adds (the budget
// seam). A false answer blocks the addition; reason says why.
type Limiter interface {
	Allow(ctx context.Context, app, region string, guest api.Guest) (ok bool, reason string, err error)
}

// AllowAll is the Limiter that allows every machine.
type AllowAll struct{}

// Allow allows.
func (AllowAll) Allow(context.Context, string, string, api.Guest) (bool, string, error) {
	return true, "", nil
}

var _ Limiter = AllowAll{}

// Holder is a Limiter that can hold an app entirely (an app suspended at
// its budget): while held, the loop neither adds nor removes its machines.
type Holder interface {
	Held(ctx context.Context, app string) (held bool, why string)
}

// Defaults of the loop.
const (
	Interval = 5 * time.Second
	// keepDecisions is how many decisions an app's record keeps for show.
	keepDecisions = 50
	// demandMaxAge: a report older than this no longer counts (its edge
	// went quiet or away).
	demandMaxAge = 3 * store.DemandInterval
)

// LoopConfig configures a Loop.
type LoopConfig struct {
	Store    *store.Store
	Cluster  Cluster
	Limiter  Limiter // AllowAll if nil
	Interval time.Duration
	// Nearest picks the allowed region that serves demand from origin.
	Nearest func(origin string, allowed []string) string
	Log     *slog.Logger
}

// Loop is the control plane's autoscaler.
type Loop struct {
	cfg     LoopConfig
	log     *slog.Logger
	metrics *Metrics

	mu      sync.Mutex
	reports map[string]received // by edge host id
	history map[string][]Recommendation
}

type received struct {
	at  time.Time
	rep store.DemandReport
}

// NewLoop makes a Loop; Run runs it.
func NewLoop(cfg LoopConfig) *Loop {
	if cfg.Limiter == nil {
		cfg.Limiter = AllowAll{}
	}
	if cfg.Interval == 0 {
		cfg.Interval = Interval
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Loop{cfg: cfg, log: cfg.Log.With("component", "autoscale"), metrics: newMetrics(),
		reports: map[string]received{}, history: map[string][]Recommendation{}}
}

// Metrics is the loop's Prometheus metrics.
func (l *Loop) Metrics() *Metrics { return l.metrics }

// Run collects demand reports, and while it holds the autoscaler lease
// decides every Interval, until ctx is done.
func (l *Loop) Run(ctx context.Context) error {
	sub, err := l.cfg.Store.Conn().Subscribe(store.DemandFilter, func(m *nats.Msg) {
		var rep store.DemandReport
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			l.log.Debug("bad demand report", "subject", m.Subject, "err", err)
			return
		}
		// The subject is who sent it (a host publishes only its own);
		// the report's own fields could name any region or host.
		region, host, ok := store.DemandSender(m.Subject)
		if !ok {
			return
		}
		rep.Region, rep.HostID = region, host
		l.mu.Lock()
		l.reports[rep.HostID+"/"+rep.Region] = received{at: time.Now(), rep: rep}
		l.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("autoscale: subscribe to demand: %w", err)
	}
	defer sub.Unsubscribe()
	return l.cfg.Store.RunHeld(ctx, "autoscaler", 15*time.Second, l.log, func(ctx context.Context) {
		t := time.NewTicker(l.cfg.Interval)
		defer t.Stop()
		for {
			if err := l.Tick(ctx); err != nil && ctx.Err() == nil {
				l.log.Warn("autoscale round failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// Demand sums the fresh reports for app by origin region.
func (l *Loop) Demand(app string) map[string]Demand {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]Demand{}
	served := map[string]map[string]int64{}
	latW := map[string]float64{}
	for k, r := range l.reports {
		if time.Since(r.at) > demandMaxAge {
			delete(l.reports, k)
			continue
		}
		for _, a := range r.rep.Apps {
			if a.App != app {
				continue
			}
			d := out[r.rep.Region]
			d.RPS += a.RPS
			d.Concurrency += a.Concurrency
			var n int64
			for reg, c := range a.ServedBy {
				if reg == "" {
					continue
				}
				if served[r.rep.Region] == nil {
					served[r.rep.Region] = map[string]int64{}
				}
				served[r.rep.Region][reg] += c
				n += c
			}
			d.LatencyMS += a.LatencyMS * float64(n)
			latW[r.rep.Region] += float64(n)
			out[r.rep.Region] = d
		}
	}
	for reg, d := range out {
		if latW[reg] > 0 {
			d.LatencyMS /= latW[reg]
		}
		var sum int64
		for _, c := range served[reg] {
			sum += c
		}
		if sum > 0 {
			d.ServedBy = map[string]float64{}
			for r, c := range served[reg] {
				d.ServedBy[r] = float64(c) / float64(sum)
			}
		}
		out[reg] = d
	}
	return out
}

// Tick runs one round over every app with autoscaling on.
func (l *Loop) Tick(ctx context.Context) error {
	recs, err := store.List[store.AutoscaleRecord](ctx, l.cfg.Store.Autoscale, ">")
	if err != nil {
		return err
	}
	regions, err := l.cfg.Cluster.HostRegions(ctx)
	if err != nil {
		return err
	}
	var errs []error
	live := map[string]bool{}
	for _, rec := range recs {
		live[rec.App] = true
		if err := l.tickApp(ctx, rec, regions); err != nil {
			errs = append(errs, fmt.Errorf("app %s: %w", rec.App, err))
		}
	}
	l.mu.Lock()
	for app := range l.history {
		if !live[app] {
			delete(l.history, app)
			l.metrics.forget(app)
		}
	}
	l.mu.Unlock()
	return errors.Join(errs...)
}

func (l *Loop) tickApp(ctx context.Context, rec store.AutoscaleRecord, withHosts []string) error {
	app := rec.App
	if h, ok := l.cfg.Limiter.(Holder); ok {
		if held, why := h.Held(ctx, app); held {
			l.log.Debug("app held; left alone", "app", app, "why", why)
			return nil
		}
	}
	ms, err := l.cfg.Cluster.Machines(ctx, app)
	if err != nil {
		return err
	}
	ms = serving(ms)
	tmpl := template(ms)
	soft := 0
	if tmpl != nil {
		for _, sv := range tmpl.Config.Services {
			if sv.Concurrency != nil && sv.Concurrency.SoftLimit > 0 {
				soft = sv.Concurrency.SoftLimit
				break
			}
		}
	}
	s := Resolve(rec.Settings, withHosts, soft)
	counts := map[string]Count{}
	for _, m := range ms {
		c := counts[m.Region]
		c.Total++
		if m.State == api.StateStarted || m.State == api.StateStarting || m.State == api.StateCreated {
			c.Started++
		}
		if owned(m) {
			c.Owned++
		}
		counts[m.Region] = c
	}
	demand := l.Demand(app)
	now := time.Now()
	l.mu.Lock()
	hist := l.history[app]
	l.mu.Unlock()
	out := Decide(Input{Now: now, Settings: s, Demand: demand, Machines: counts, History: hist, Nearest: l.cfg.Nearest})
	hist = append(hist, out.Recommendation)
	for len(hist) > 0 && now.Sub(hist[0].At) > s.Window {
		hist = hist[1:]
	}
	l.mu.Lock()
	l.history[app] = hist
	l.mu.Unlock()

	var decisions []api.AutoscaleDecision
	for _, ch := range out.Changes {
		d := api.AutoscaleDecision{At: now.UTC(), Region: ch.Region, From: ch.From, To: ch.To, Reason: ch.Reason}
		if ch.To > ch.From {
			d.Blocked = l.add(ctx, app, ch, tmpl)
		} else {
			d.Blocked = l.remove(ctx, app, ch, ms)
		}
		if d.Blocked == "" {
			l.log.Info("autoscale", "app", app, "region", ch.Region, "from", ch.From, "to", ch.To, "reason", ch.Reason)
		} else {
			l.log.Warn("autoscale change blocked", "app", app, "region", ch.Region, "from", ch.From, "to", ch.To, "why", d.Blocked)
		}
		decisions = append(decisions, d)
	}

	view := regionsView(demand, counts, out.Desired)
	l.metrics.set(app, view)
	_, err = store.Modify(ctx, l.cfg.Store.Autoscale, app, func(r *store.AutoscaleRecord) error {
		r.Regions = view
		for _, d := range decisions {
			if repeats(r.Decisions, d) {
				continue
			}
			r.Decisions = append(r.Decisions, d)
		}
		if n := len(r.Decisions); n > keepDecisions {
			r.Decisions = slices.Clone(r.Decisions[n-keepDecisions:])
		}
		r.UpdatedAt = now.UTC()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil // disabled meanwhile
	}
	return err
}

// repeats says d is the same blocked change as the region's last decision
// (a blocked change comes back every round; it is recorded once).
func repeats(ds []api.AutoscaleDecision, d api.AutoscaleDecision) bool {
	if d.Blocked == "" {
		return false
	}
	for i := len(ds) - 1; i >= 0; i-- {
		if ds[i].Region == d.Region {
			return ds[i].From == d.From && ds[i].To == d.To && ds[i].Blocked == d.Blocked
		}
	}
	return false
}

func (l *Loop) add(ctx context.Context, app string, ch Change, tmpl *api.Machine) string {
	if tmpl == nil {
		return "the app has no machine to copy the config from: run perch deploy first"
	}
	for range ch.To - ch.From {
		ok, reason, err := l.cfg.Limiter.Allow(ctx, app, ch.Region, tmpl.Config.Guest)
		if err != nil {
			return "limiter: " + err.Error()
		}
		if !ok {
			return "limiter: " + reason
		}
		cfg := tmpl.Config
		cfg.Metadata = maps.Clone(cfg.Metadata)
		if cfg.Metadata == nil {
			cfg.Metadata = map[string]string{}
		}
		cfg.Metadata[api.MetadataAutoscaled] = "true"
		m, err := l.cfg.Cluster.CreateMachine(ctx, app, ch.Region, cfg)
		if err != nil {
			return "create machine: " + err.Error()
		}
		l.log.Info("autoscale added machine", "app", app, "region", ch.Region, "machine", m.ID)
	}
	return ""
}

// remove destroys (with drain) the machines the autoscaler added in the
// region beyond the desired count: stopped ones first, then the newest.
func (l *Loop) remove(ctx context.Context, app string, ch Change, ms []api.Machine) string {
	var cand []api.Machine
	for _, m := range ms {
		if m.Region == ch.Region && owned(m) {
			cand = append(cand, m)
		}
	}
	slices.SortFunc(cand, func(a, b api.Machine) int {
		as, bs := a.State == api.StateStopped, b.State == api.StateStopped
		if as != bs {
			if as {
				return -1
			}
			return 1
		}
		return cmp.Or(b.CreatedAt.Compare(a.CreatedAt), cmp.Compare(b.ID, a.ID))
	})
	n := min(ch.From-ch.To, len(cand))
	for _, m := range cand[:n] {
		if err := l.cfg.Cluster.DestroyMachine(ctx, app, m.ID); err != nil {
			return "destroy machine " + m.ID + ": " + err.Error()
		}
		l.log.Info("autoscale removed machine", "app", app, "region", ch.Region, "machine", m.ID)
	}
	if n < ch.From-ch.To {
		return strconv.Itoa(ch.From-ch.To-n) + " of the machines are not the autoscaler's: it removes only machines it added"
	}
	return ""
}

func owned(m api.Machine) bool { return m.Config.Metadata[api.MetadataAutoscaled] == "true" }

// serving is the machines that take the demand the autoscaler scales
// for: those with a service. A process group with none (a worker) is
// neither counted nor copied. An app none of whose machines has a service
// keeps them all, as before process groups.
func serving(ms []api.Machine) []api.Machine {
	var out []api.Machine
	for _, m := range ms {
		if len(m.Config.Services) > 0 {
			out = append(out, m)
		}
	}
	if len(out) == 0 {
		return ms
	}
	return out
}

// template is the machine whose config new machines copy: the newest the
// user made (so a deploy's release), else the newest.
func template(ms []api.Machine) *api.Machine {
	var best *api.Machine
	for i := range ms {
		m := &ms[i]
		if best == nil || (owned(*best) && !owned(*m)) || (owned(*best) == owned(*m) && m.CreatedAt.After(best.CreatedAt)) {
			best = m
		}
	}
	return best
}

func regionsView(dem map[string]Demand, counts map[string]Count, desired map[string]int) []api.AutoscaleRegion {
	rs := map[string]bool{}
	for r := range dem {
		rs[r] = true
	}
	for r := range counts {
		rs[r] = true
	}
	for r := range desired {
		rs[r] = true
	}
	var out []api.AutoscaleRegion
	for _, r := range slices.Sorted(maps.Keys(rs)) {
		d, c := dem[r], counts[r]
		want, ok := desired[r]
		if !ok {
			want = c.Total
		}
		out = append(out, api.AutoscaleRegion{Region: r, RPS: d.RPS, Concurrency: d.Concurrency, LatencyMS: d.LatencyMS,
			ServedBy: d.ServedBy, Machines: c.Total, Started: c.Started, Desired: want})
	}
	return out
}
