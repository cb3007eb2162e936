package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/autoscale"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/store"
)

// Budgets (package billing): every control plane keeps the month's usage
// in a Ledger fed by the PERCH_USAGE stream (each record id counted once);
// one of them, under the "billing" lease, checks the budgets every meter
// interval: alerts (event, log line, webhook), suspension at the limit,
// resumption at the month's start. Budgets live in perch_budgets.

// BucketBudgets holds budgets by "app.<name>" and "org.<name>".
const BucketBudgets = "perch_budgets"

type billingState struct {
	prices   billing.Prices
	clock    billing.Clock
	interval time.Duration
	ledger   *billing.Ledger
	budgets  jetstream.KeyValue
	hooks    *http.Client
	// hookCtx bounds webhook deliveries by the server's life.
	hookCtx    context.Context
	cancelHook context.CancelFunc
	// rebuilt is closed once the ledger has read the stream up to where
	// it ended when this control plane started: until then spend reads
	// too low, so budget decisions wait for it (waitLedger).
	rebuilt     chan struct{}
	rebuiltOnce sync.Once
}

// ledgerWait bounds how long a request waits for the ledger's rebuild.
const ledgerWait = time.Minute

// waitLedger returns once the ledger has caught up with the stream as it
// was at start, or ctx's error.
func (b *billingState) waitLedger(ctx context.Context) error {
	select {
	case <-b.rebuilt:
		return nil
	default:
	}
	ctx, cancel := context.WithTimeout(ctx, ledgerWait)
	defer cancel()
	select {
	case <-b.rebuilt:
		return nil
	case <-ctx.Done():
		return errf(http.StatusServiceUnavailable, "usage is still being read from the %s stream after a restart; try again shortly", billing.Stream)
	}
}

func (s *Server) setupBilling(ctx context.Context) error {
	b := &billingState{prices: billing.DefaultPrices(), clock: s.cfg.Clock, interval: s.cfg.MeterInterval,
		hooks: &http.Client{}, rebuilt: make(chan struct{})}
	if s.cfg.Prices != nil {
		b.prices = *s.cfg.Prices
	}
	if b.clock == nil {
		c, err := billing.ClockFromEnv()
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		b.clock = c
	}
	if b.interval == 0 {
		b.interval = billing.DefaultInterval
	}
	b.ledger = billing.NewLedger(b.prices)
	b.hookCtx, b.cancelHook = context.WithCancel(context.Background())
	if err := s.st.EnsureStream(ctx, jetstream.StreamConfig{
		Name: billing.Stream, Subjects: []string{billing.Filter}, Storage: jetstream.FileStorage,
		MaxAge: billing.StreamMaxAge, Duplicates: 2 * time.Minute,
	}); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	kv, err := s.st.EnsureBucket(ctx, jetstream.KeyValueConfig{Bucket: BucketBudgets, History: 1})
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	b.budgets = kv
	s.billing = b
	return nil
}

// runBilling feeds the ledger and, under the lease, enforces budgets.
func (s *Server) runBilling(ctx context.Context) {
	b := s.billing
	defer b.cancelHook()
	log := s.log.With("component", "billing")
	js := s.st.JetStream()
	// The rebuild is done at the stream's last message as of now.
	var last uint64
	if st, err := js.Stream(ctx, billing.Stream); err == nil {
		last = st.CachedInfo().State.LastSeq
	} else {
		log.Error("cannot read the usage stream; usage and budgets are off", "err", err)
		return
	}
	started := time.Now()
	caughtUp := func() {
		b.rebuiltOnce.Do(func() {
			close(b.rebuilt)
			log.Info("usage ledger rebuilt from the stream", "messages", last, "took", time.Since(started).Round(time.Millisecond))
		})
	}
	if last == 0 {
		caughtUp()
	}
	cons, err := js.OrderedConsumer(ctx, billing.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{billing.Filter}})
	if err != nil {
		log.Error("cannot read the usage stream; usage and budgets are off", "err", err)
		return
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		var batch billing.Batch
		if err := json.Unmarshal(m.Data(), &batch); err != nil {
			log.Warn("bad usage message", "subject", m.Subject(), "err", err)
		}
		// Months before the previous one are closed: their records
		// are refused and the ledger forgets what it kept for them.
		b.ledger.Forget(billing.MonthOf(b.clock.Now()).Prev())
		late := b.ledger.Late()
		for _, r := range batch.Records {
			b.ledger.Add(r)
		}
		if n := b.ledger.Late() - late; n > 0 {
			log.Warn("usage records of a closed month refused (a host sent them more than a month late)", "host", batch.Host, "records", n)
		}
		if meta, err := m.Metadata(); err == nil && (meta.Sequence.Stream >= last || meta.NumPending == 0) {
			caughtUp()
		}
	})
	if err != nil {
		log.Error("cannot read the usage stream; usage and budgets are off", "err", err)
		return
	}
	defer cc.Stop()
	if err := b.waitLedger(ctx); err != nil && ctx.Err() == nil {
		log.Warn("the usage ledger is still being rebuilt; budgets are checked once it is", "err", err)
	}
	select {
	case <-b.rebuilt:
	case <-ctx.Done():
		return
	}
	_ = s.st.RunHeld(ctx, "billing", 15*time.Second, log, func(ctx context.Context) {
		// Four checks an interval: with the estimate of the open
		// interval (spendNow), an app stops close to its budget.
		t := time.NewTicker(b.interval / 4)
		defer t.Stop()
		for {
			if err := s.enforceBudgets(ctx); err != nil && ctx.Err() == nil {
				log.Warn("budget round failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// budgetApps are the apps a budget covers.
func (s *Server) budgetApps(ctx context.Context, b billing.Budget) ([]string, error) {
	if b.Scope == "app" {
		return []string{b.Name}, nil
	}
	apps, err := store.List[api.App](ctx, s.st.Apps, ">")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range apps {
		if a.Org == b.Name {
			out = append(out, a.Name)
		}
	}
	return out, nil
}

func (s *Server) enforceBudgets(ctx context.Context) error {
	b := s.billing
	budgets, err := store.List[billing.Budget](ctx, b.budgets, ">")
	if err != nil {
		return err
	}
	var errs []error
	for _, bud := range budgets {
		if err := s.enforce(ctx, bud); err != nil {
			errs = append(errs, fmt.Errorf("budget %s: %w", bud.Key(), err))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) enforce(ctx context.Context, bud billing.Budget) error {
	b := s.billing
	now := b.clock.Now()
	period := bud.Period(now)
	month := period.Key
	if bud.Suspended != nil && bud.Suspended.Month != month {
		return s.resume(ctx, bud.Scope, bud.Name, "the billing period "+month+" began")
	}
	apps, err := s.budgetApps(ctx, bud)
	if err != nil {
		return err
	}
	spent, err := s.spendNow(ctx, period, apps, now)
	if err != nil {
		return err
	}
	if due := bud.Due(month, spent); len(due) > 0 {
		var alerts []billing.Alert
		_, err := store.Modify(ctx, b.budgets, bud.Key(), func(cur *billing.Budget) error {
			alerts = nil
			if cur.Alerted == nil {
				cur.Alerted = map[string][]int{}
			}
			for _, pct := range cur.Due(month, spent) {
				cur.Alerted[month] = append(cur.Alerted[month], pct)
				a := billing.Alert{Type: "budget.alert", Scope: cur.Scope, Name: cur.Name, Month: month, Percent: pct,
					Spent: spent, Budget: cur.Monthly, At: now}
				alerts = append(alerts, a)
				cur.AddEvent(api.Event{Type: "budget.alert", Status: fmt.Sprintf("%d%%", pct), Source: "billing", Timestamp: now.UnixMilli(),
					Message: fmt.Sprintf("%s %s spent $%.4f of its monthly budget of $%g (%d%%) in %s", cur.Scope, cur.Name, spent, cur.Monthly, pct, month)})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range alerts {
			s.log.Warn("budget alert", "scope", a.Scope, "name", a.Name, "percent", a.Percent, "spent", a.Spent, "budget", a.Budget, "month", a.Month)
			s.sendAlert(bud, a)
		}
	}
	if spent >= bud.Monthly && bud.Suspended == nil && bud.ResumedMonth != month {
		return s.suspend(ctx, bud, apps, spent, now)
	}
	return nil
}

// spendNow is apps' spend in the billing period up to now: the ledger's,
// plus the started machines' cost since their latest records (the
// interval hosts have not closed yet), so a budget is caught between
// records.
func (s *Server) spendNow(ctx context.Context, period billing.Period, apps []string, now time.Time) (float64, error) {
	b := s.billing
	spent := b.ledger.Between(apps, period.Start, now)
	for _, app := range apps {
		since := b.ledger.MeteredUntil(app)
		if since.IsZero() || !now.After(since) {
			continue
		}
		if start := period.Start; since.Before(start) {
			since = start
		}
		burn, err := s.burn(ctx, []string{app})
		if err != nil {
			return 0, err
		}
		spent += burn * now.Sub(since).Seconds()
	}
	return spent, nil
}

// burn is what apps' machines desired started cost a second.
func (s *Server) burn(ctx context.Context, apps []string) (float64, error) {
	burn := 0.0
	for _, a := range apps {
		specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, a+".*")
		if err != nil {
			return 0, err
		}
		for _, sp := range specs {
			if sp.Desired == store.DesireStarted {
				burn += s.billing.prices.RunningPerSecond(sp.Config.Guest, sp.Region)
			}
		}
	}
	return burn, nil
}

// sendAlert posts a to the budget's webhook in its own goroutine: a slow
// or dead webhook never holds up alerts or suspension.
func (s *Server) sendAlert(bud billing.Budget, a billing.Alert) {
	if bud.Webhook == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(s.billing.hookCtx, 2*time.Minute)
		defer cancel()
		if err := billing.SendWebhook(ctx, s.billing.hooks, bud.Webhook, bud.Secret, a, s.log); err != nil {
			s.log.Error("budget webhook gave up", "scope", bud.Scope, "name", bud.Name, "err", err)
		}
	}()
}

// suspend stops every started machine of apps through the normal drain
// path, after recording which they were and marking the apps suspended
// (the edges answer 503 from then on).
func (s *Server) suspend(ctx context.Context, bud billing.Budget, apps []string, spent float64, now time.Time) error {
	period := bud.Period(now)
	month := period.Key
	sus := api.Suspension{Reason: "monthly budget reached", Budget: bud.Monthly, Scope: bud.Scope, ReachedAt: now, ResumesAt: period.End}
	var machines []billing.SuspendedMachine
	for _, app := range apps {
		specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, app+".*")
		if err != nil {
			return err
		}
		for _, sp := range specs {
			if sp.Desired == store.DesireStarted {
				machines = append(machines, billing.SuspendedMachine{App: app, ID: sp.ID, Region: sp.Region})
			}
		}
	}
	if _, err := store.Modify(ctx, s.billing.budgets, bud.Key(), func(cur *billing.Budget) error {
		cur.Suspended = &billing.Suspended{Suspension: sus, Month: month, Machines: machines}
		cur.AddEvent(api.Event{Type: "budget.suspended", Status: "suspended", Source: "billing", Timestamp: now.UnixMilli(),
			Message: fmt.Sprintf("%s; %d machine(s) stopped", sus.Message(), len(machines))})
		return nil
	}); err != nil {
		return err
	}
	for _, app := range apps {
		if _, err := store.Modify(ctx, s.st.Apps, app, func(a *api.App) error { a.Suspended = &sus; return nil }); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	var errs []error
	for _, m := range machines {
		errs = append(errs, s.setDesiredBy(ctx, m.App, m.ID, store.DesireStarted, store.DesireStopped, "budget: "+sus.Message()))
	}
	s.log.Warn("budget reached: app(s) suspended", "scope", bud.Scope, "name", bud.Name, "spent", spent, "budget", bud.Monthly,
		"machines", len(machines), "resumes", sus.ResumesAt)
	s.sendAlert(bud, billing.Alert{Type: "budget.suspended", Scope: bud.Scope, Name: bud.Name, Month: month, Percent: 100,
		Spent: spent, Budget: bud.Monthly, At: now, ResumesAt: sus.ResumesAt})
	return errors.Join(errs...)
}

// resume starts the machines a suspension stopped and lifts it.
func (s *Server) resume(ctx context.Context, scope, name, why string) error {
	now := s.billing.clock.Now()
	var sus *billing.Suspended
	bud, err := store.Modify(ctx, s.billing.budgets, billing.BudgetKey(scope, name), func(cur *billing.Budget) error {
		sus = cur.Suspended
		if sus == nil {
			return nil
		}
		cur.Suspended = nil
		cur.AddEvent(api.Event{Type: "budget.resumed", Status: "resumed", Source: "billing", Timestamp: now.UnixMilli(), Message: "resumed: " + why})
		return nil
	})
	if err != nil || sus == nil {
		return err
	}
	apps, err := s.budgetApps(ctx, bud)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range sus.Machines {
		errs = append(errs, s.setDesiredBy(ctx, m.App, m.ID, store.DesireStopped, store.DesireStarted, "budget: resumed, "+why))
	}
	for _, app := range apps {
		if _, err := store.Modify(ctx, s.st.Apps, app, func(a *api.App) error { a.Suspended = nil; return nil }); err != nil && !errors.Is(err, store.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	s.log.Info("budget: app(s) resumed", "scope", scope, "name", name, "machines", len(sus.Machines), "why", why)
	return errors.Join(errs...)
}

// setDesiredBy moves a machine from one desired state to another, as the
// API's start and stop do (the host drains before stopping); a machine
// gone or changed meanwhile is left alone.
func (s *Server) setDesiredBy(ctx context.Context, app, id, from, to, reason string) error {
	_, err := store.Modify(ctx, s.st.Machines, store.MachineKey(app, id), func(m *store.MachineSpec) error {
		if m.Desired != from {
			return errSkip
		}
		m.Desired = to
		m.Generation++
		m.Reason, m.ReasonGeneration = reason, m.Generation
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, errSkip) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

var errSkip = errors.New("skip")

// refuseSuspended refuses to start a machine of an app suspended at its
// budget.
func refuseSuspended(a api.App, starts bool) error {
	if a.Suspended == nil || !starts {
		return nil
	}
	return errf(http.StatusConflict, "app %s is %s. Raise the budget (perch budget set), remove it (perch budget unset) or run perch budget resume to start machines now",
		a.Name, a.Suspended.Message())
}

// budgetLimiter is the autoscaler's Limiter: it refuses a machine whose
// cost to the month's end would take the projected spend over a budget
// covering the app, and holds a suspended app entirely.
type budgetLimiter struct{ s *Server }

var (
	_ autoscale.Limiter = budgetLimiter{}
	_ autoscale.Holder  = budgetLimiter{}
)

// budgetsOf are the budgets covering app (its own, its organisation's).
func (s *Server) budgetsOf(ctx context.Context, app string) ([]billing.Budget, error) {
	a, err := s.app(ctx, app)
	if err != nil {
		return nil, err
	}
	var out []billing.Budget
	keys := []string{billing.BudgetKey("app", app)}
	if a.Org != "" {
		keys = append(keys, billing.BudgetKey("org", a.Org))
	}
	for _, k := range keys {
		b, _, err := store.Get[billing.Budget](ctx, s.billing.budgets, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func (l budgetLimiter) Held(ctx context.Context, app string) (bool, string) {
	bs, err := l.s.budgetsOf(ctx, app)
	if err != nil {
		return false, ""
	}
	for _, b := range bs {
		if b.Suspended != nil {
			return true, b.Suspended.Message()
		}
	}
	return false, ""
}

func (l budgetLimiter) Allow(ctx context.Context, app, region string, guest api.Guest) (bool, string, error) {
	s := l.s
	bs, err := s.budgetsOf(ctx, app)
	if err != nil {
		return false, "", err
	}
	if len(bs) > 0 {
		select {
		case <-s.billing.rebuilt:
		default:
			return false, "usage is still being read from the stream after a restart", nil
		}
	}
	now := s.billing.clock.Now()
	for _, b := range bs {
		period := b.Period(now)
		if b.Suspended != nil {
			return false, b.Suspended.Message(), nil
		}
		apps, err := s.budgetApps(ctx, b)
		if err != nil {
			return false, "", err
		}
		burn, err := s.burn(ctx, apps)
		if err != nil {
			return false, "", err
		}
		spent, err := s.spendNow(ctx, period, apps, now)
		if err != nil {
			return false, "", err
		}
		add := s.billing.prices.RunningPerSecond(guest, region)
		if ok, _, why := billing.Projection(b.Monthly, spent, burn, add, now, period.End); !ok {
			return false, fmt.Sprintf("%s (%s budget of %s)", why, b.Scope, b.Name), nil
		}
	}
	return true, "", nil
}

// usageMonth reads ?month=, the clock's month by default, once the
// ledger has caught up with the stream.
func (s *Server) usageMonth(r *http.Request) (billing.Month, time.Time, error) {
	if err := s.billing.waitLedger(r.Context()); err != nil {
		return "", time.Time{}, err
	}
	now := s.billing.clock.Now()
	m := billing.MonthOf(now)
	if q := r.URL.Query().Get("month"); q != "" {
		var err error
		if m, err = billing.ParseMonth(q); err != nil {
			return "", now, errf(http.StatusBadRequest, "%s", err)
		}
	}
	if now.After(m.End()) {
		now = m.End()
	}
	return m, now, nil
}

func (s *Server) appUsage(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, now, err := s.usageMonth(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.billing.ledger.Apps(m, []string{a.Name}, now))
}

func (s *Server) orgUsage(w http.ResponseWriter, r *http.Request) {
	m, now, err := s.usageMonth(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	apps, err := s.budgetApps(r.Context(), billing.Budget{Scope: "org", Name: r.PathValue("org")})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.billing.ledger.Apps(m, apps, now))
}

// budgetTarget is the scope and name of a budget request's path.
func (s *Server) budgetTarget(r *http.Request) (string, string, error) {
	if org := r.PathValue("org"); org != "" {
		return "org", org, nil
	}
	a, err := s.app(r.Context(), r.PathValue("app"))
	return "app", a.Name, err
}

func (s *Server) getBudget(w http.ResponseWriter, r *http.Request) {
	scope, name, err := s.budgetTarget(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	b, _, err := store.Get[billing.Budget](r.Context(), s.billing.budgets, billing.BudgetKey(scope, name))
	if errors.Is(err, store.ErrNotFound) {
		err = errf(http.StatusNotFound, "%s %s has no budget; set one with perch budget set --monthly 50", scope, name)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) putBudget(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	scope, name, err := s.budgetTarget(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req billing.BudgetRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	nb := billing.Budget{Scope: scope, Name: name, Monthly: req.Monthly, Alerts: req.Alerts, Webhook: req.Webhook, AnchorDay: req.AnchorDay}
	if err := nb.Validate(); err != nil {
		s.fail(w, r, errf(http.StatusBadRequest, "%s", err))
		return
	}
	now := s.billing.clock.Now()
	put := func(cur *billing.Budget) error {
		if cur.Monthly != nb.Monthly {
			cur.Alerted = nil // a new amount alerts afresh
		}
		cur.Scope, cur.Name, cur.Monthly, cur.Alerts, cur.AnchorDay = scope, name, nb.Monthly, nb.Alerts, nb.AnchorDay
		if cur.Webhook != nb.Webhook || cur.Secret == "" {
			cur.Secret = randHex(32)
		}
		cur.Webhook = nb.Webhook
		cur.UpdatedAt = now
		return nil
	}
	b, err := store.Modify(ctx, s.billing.budgets, nb.Key(), put)
	if errors.Is(err, store.ErrNotFound) {
		nb.Secret = randHex(32)
		nb.UpdatedAt = now
		_, err = store.Create(ctx, s.billing.budgets, nb.Key(), nb)
		b = nb
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("budget set", "scope", scope, "name", name, "monthly", b.Monthly, "alerts", b.Alerts, "webhook", b.Webhook != "")
	if b.Suspended != nil {
		if err := s.billing.waitLedger(ctx); err != nil {
			s.fail(w, r, err)
			return
		}
		apps, _ := s.budgetApps(ctx, b)
		if spent, err := s.spendNow(ctx, b.Period(now), apps, now); err == nil && spent < b.Monthly {
			if err := s.resume(ctx, scope, name, fmt.Sprintf("the budget was raised to $%g", b.Monthly)); err != nil {
				s.fail(w, r, err)
				return
			}
			b, _, _ = store.Get[billing.Budget](ctx, s.billing.budgets, nb.Key())
		}
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) deleteBudget(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	scope, name, err := s.budgetTarget(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.resume(ctx, scope, name, "the budget was removed"); err != nil && !errors.Is(err, store.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	if err := s.billing.budgets.Delete(ctx, billing.BudgetKey(scope, name)); err != nil {
		s.fail(w, r, fmt.Errorf("delete budget: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func (s *Server) resumeBudget(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	scope, name, err := s.budgetTarget(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	now := s.billing.clock.Now()
	_, err = store.Modify(ctx, s.billing.budgets, billing.BudgetKey(scope, name), func(cur *billing.Budget) error {
		cur.ResumedMonth = cur.Period(now).Key
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		err = errf(http.StatusNotFound, "%s %s has no budget to resume", scope, name)
	}
	if err == nil {
		err = s.resume(ctx, scope, name, "perch budget resume (not suspended again this month)")
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}
