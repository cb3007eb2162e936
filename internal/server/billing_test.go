package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/store"
)

type fixedClock time.Time

func (c fixedClock) Now() time.Time { return time.Time(c) }

// TestAutoscalerStopsAtTheBudgetProjection: demand that wants 6 machines
// in iad, a budget of $4.50 with 16 days left in the month (a machine
// costs $1.03 to the month's end): the autoscaler adds machines up to 4 in
// all and no more, and its decision says the budget's projection blocked
// the fifth.
func TestAutoscalerStopsAtTheBudgetProjection(t *testing.T) {
	now := time.Date(2026, 12, 16, 0, 0, 0, 0, time.UTC)
	s := startServer(t, t.TempDir(), func(c *Config) {
		c.Clock = fixedClock(now)
		c.AutoscaleInterval = 100 * time.Millisecond
		c.MeterInterval = 100 * time.Millisecond
	})
	ctx := context.Background()
	h, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 64, MemoryMB: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "busy"}); err != nil {
		t.Fatal(err)
	}
	cfg := api.MachineConfig{Image: "r/busy:1", Guest: api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}}
	if _, err := s.c.CreateMachine(ctx, "busy", api.CreateMachineRequest{Region: "iad", Config: cfg}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.SetAutoscale(ctx, "busy", api.AutoscaleSettings{MaxMachines: 10}); err != nil {
		t.Fatal(err)
	}
	var b billing.Budget
	if err := s.c.PutBudget(ctx, "app", "busy", billing.BudgetRequest{Monthly: 4.5}, &b); err != nil {
		t.Fatal(err)
	}
	perMachine := billing.DefaultPrices().RunningPerSecond(cfg.Guest, "iad") * 16 * 86400
	if 4*perMachine > 4.5 || 5*perMachine <= 4.5 {
		t.Fatalf("test arithmetic: a machine costs $%.3f to the month's end", perMachine)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			rep := store.DemandReport{Region: "iad", HostID: h.ID, At: time.Now(), Interval: 2,
				Apps: []store.AppDemand{{App: "busy", RPS: 400, Concurrency: 80, InFlight: 80}}} // 6 machines' worth
			b, _ := json.Marshal(rep)
			_ = s.st.Conn().Publish(store.DemandSubject("iad", h.ID), b)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a, err := s.c.GetAutoscale(ctx, "busy")
		if err != nil {
			t.Fatal(err)
		}
		ms, err := s.c.ListMachines(ctx, "busy", "")
		if err != nil {
			t.Fatal(err)
		}
		var blocked string
		for _, d := range a.Decisions {
			if d.Blocked != "" {
				blocked = d.Blocked
			}
		}
		if blocked != "" && len(ms) == 4 {
			if !strings.Contains(blocked, "projected spend") || !strings.Contains(blocked, "monthly budget of $4.5") {
				t.Errorf("blocked decision says %q, want the budget's projection", blocked)
			}
			if len(a.Regions) > 0 && a.Regions[0].Desired < 6 {
				t.Errorf("demand wanted %d machines, want 6", a.Regions[0].Desired)
			}
			break
		}
		if len(ms) > 4 {
			t.Fatalf("%d machines: the autoscaler went past the budget's projection (4 fit)", len(ms))
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s: %d machines, decisions %+v", len(ms), a.Decisions)
		}
		time.Sleep(50 * time.Millisecond) // poll
	}
	// Still 4 a few rounds later.
	time.Sleep(500 * time.Millisecond)
	if ms, _ := s.c.ListMachines(ctx, "busy", ""); len(ms) != 4 {
		t.Errorf("%d machines after more rounds, want 4", len(ms))
	}
}

// TestSuspendNotHeldByAHangingWebhook: records on the stream take an
// app past its budget; its webhook never answers; the app is suspended
// within two check intervals all the same (its machine desired stopped,
// the app marked), the records counted once though sent twice. Bad
// budgets are refused with what to do.
func TestSuspendNotHeldByAHangingWebhook(t *testing.T) {
	now := time.Date(2026, 12, 19, 12, 0, 0, 0, time.UTC)
	s := startServer(t, t.TempDir(), func(c *Config) {
		c.Clock = fixedClock(now)
		c.MeterInterval = 200 * time.Millisecond
	})
	ctx := context.Background()
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer hang.Close()
	defer close(release)
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "spender"}); err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "spender", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/s:1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  billing.BudgetRequest
		want string
	}{
		{billing.BudgetRequest{Monthly: -5}, "positive number"},
		{billing.BudgetRequest{Monthly: 5, Webhook: "ftp://example.com/x"}, "http:// or https://"},
		{billing.BudgetRequest{Monthly: 5, Alerts: []int{150}}, "1 to 100"},
		{billing.BudgetRequest{Monthly: 5, AnchorDay: 31}, "1 to 28"},
	} {
		err := s.c.PutBudget(ctx, "app", "spender", c.req, nil)
		wantStatus(t, err, http.StatusBadRequest, c.want)
	}
	var b billing.Budget
	if err := s.c.PutBudget(ctx, "app", "spender", billing.BudgetRequest{Monthly: 1, Webhook: hang.URL}, &b); err != nil {
		t.Fatal(err)
	}
	// $1.94 a month: 16 days of a shared-cpu-1x is about $1.03.
	start := now.AddDate(0, 0, -16)
	rec := billing.Record{Kind: billing.KindMachine, App: "spender", Region: "iad", Machine: m.ID, State: api.StateStarted,
		CPUKind: "shared", CPUs: 1, MemoryMB: 256, Start: start, End: now}
	rec.ID = billing.MachineRecordID(m.ID, start)
	data, _ := json.Marshal(billing.Batch{Host: "h", Records: []billing.Record{rec}})
	for i := range 2 { // a resend with another message id: counted once
		if _, err := s.st.JetStream().Publish(ctx, billing.SubjectPrefix+"h", data, jetstream.WithMsgID(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now()
	for {
		a, err := s.c.GetApp(ctx, "spender")
		if err != nil {
			t.Fatal(err)
		}
		sp, _, err := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("spender", m.ID))
		if err != nil {
			t.Fatal(err)
		}
		if a.Suspended != nil && sp.Desired == store.DesireStopped {
			if want := "suspended: monthly budget of $1 reached on 2026-12-19; resumes 2027-01-01 00:00 UTC"; a.Suspended.Message() != want {
				t.Errorf("status says %q, want %q", a.Suspended.Message(), want)
			}
			break
		}
		if time.Since(sent) > 2*200*time.Millisecond+time.Second {
			t.Fatalf("not suspended %s after the records (webhook hangs): app %+v, desired %s", time.Since(sent), a.Suspended, sp.Desired)
		}
		time.Sleep(20 * time.Millisecond) // poll
	}
	err = s.c.StartMachine(ctx, "spender", m.ID)
	wantStatus(t, err, http.StatusConflict, "perch budget resume")
	var u billing.Usage
	if err := s.c.Usage(ctx, "app", "spender", "2026-12", &u); err != nil {
		t.Fatal(err)
	}
	if u.StartedSeconds != 16*86400 {
		t.Errorf("started seconds %v, want one record's %v", u.StartedSeconds, 16*86400)
	}
	// Removing the budget resumes at once.
	if err := s.c.DeleteBudget(ctx, "app", "spender"); err != nil {
		t.Fatal(err)
	}
	sp, _, _ := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("spender", m.ID))
	a, _ := s.c.GetApp(ctx, "spender")
	if sp.Desired != store.DesireStarted || a.Suspended != nil {
		t.Errorf("after perch budget unset: desired %s, suspended %+v; want started, not suspended", sp.Desired, a.Suspended)
	}
}

// TestOrgBudgetSuspendsEveryAppOfTheOrg: an organisation's budget sums
// its apps' usage; reached, it suspends all of them (and no other app),
// and perch budget resume brings them back for the rest of the month.
func TestOrgBudgetSuspendsEveryAppOfTheOrg(t *testing.T) {
	now := time.Date(2026, 12, 19, 12, 0, 0, 0, time.UTC)
	s := startServer(t, t.TempDir(), func(c *Config) {
		c.Clock = fixedClock(now)
		c.MeterInterval = 100 * time.Millisecond
	})
	ctx := context.Background()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192}); err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, a := range []struct{ app, org string }{{"a1", "acme"}, {"a2", "acme"}, {"other", "zeta"}} {
		if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: a.app, Org: a.org}); err != nil {
			t.Fatal(err)
		}
		m, err := s.c.CreateMachine(ctx, a.app, api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/x:1"}})
		if err != nil {
			t.Fatal(err)
		}
		ids[a.app] = m.ID
	}
	// Acme's billing period starts on the 15th: 4.5 days of two machines
	// (about $0.58) count, not the calendar month's 12 days.
	if err := s.c.PutBudget(ctx, "org", "acme", billing.BudgetRequest{Monthly: 0.5, AnchorDay: 15}, nil); err != nil {
		t.Fatal(err)
	}
	var recs []billing.Record
	for _, app := range []string{"a1", "a2", "other"} { // 12 days, about $0.78 each
		start := now.AddDate(0, 0, -12)
		recs = append(recs, billing.Split(billing.Record{ID: billing.MachineRecordID(ids[app], start), Kind: billing.KindMachine, App: app, Region: "iad",
			Machine: ids[app], State: api.StateStarted, CPUs: 1, MemoryMB: 256, Start: start, End: now.Add(-time.Minute)})...) // by day, as hosts send them
	}
	data, _ := json.Marshal(billing.Batch{Host: "h", Records: recs})
	if _, err := s.st.JetStream().Publish(ctx, billing.SubjectPrefix+"h", data); err != nil {
		t.Fatal(err)
	}
	suspended := func(app string) bool {
		a, err := s.c.GetApp(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		return a.Suspended != nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for !suspended("a1") || !suspended("a2") {
		if time.Now().After(deadline) {
			t.Fatal("acme's apps not suspended 5 s after its spend passed the budget")
		}
		time.Sleep(20 * time.Millisecond) // poll
	}
	if a, _ := s.c.GetApp(ctx, "a1"); a.Suspended != nil && !strings.Contains(a.Suspended.Message(), "resumes 2027-01-15 00:00 UTC") {
		t.Errorf("suspension says %q, want it to end on the 15th", a.Suspended.Message())
	}
	if suspended("other") {
		t.Error("an app of another organisation was suspended")
	}
	var u billing.Usage
	if err := s.c.Usage(ctx, "org", "acme", "", &u); err != nil {
		t.Fatal(err)
	}
	if len(u.Apps) != 2 || u.Cost < 1.5 {
		t.Errorf("acme's December usage: $%.2f over %d apps, want over $1.50 over 2", u.Cost, len(u.Apps))
	}
	if err := s.c.ResumeBudget(ctx, "org", "acme"); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"a1", "a2"} {
		sp, _, _ := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey(app, ids[app]))
		if suspended(app) || sp.Desired != store.DesireStarted {
			t.Errorf("%s after resume: suspended %v, desired %s", app, suspended(app), sp.Desired)
		}
	}
	time.Sleep(300 * time.Millisecond) // three checks: not suspended again this month
	if suspended("a1") {
		t.Error("suspended again after perch budget resume in the same month")
	}
}

// TestBudgetDecisionsWaitForTheLedgerRebuild: 10,000 records (16 days of
// a machine, $1.03) take an app past its $1 budget and it is suspended;
// the control plane restarts and rebuilds its ledger from the stream. A
// budget put (which resumes the app if spend is now under the budget) and
// the usage API, sent the moment the new server answers, wait for the
// rebuild: the app stays suspended, the usage is whole, and no alert is
// sent twice. Raising the budget above the spend then resumes it at once.
func TestBudgetDecisionsWaitForTheLedgerRebuild(t *testing.T) {
	now := time.Date(2026, 12, 19, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	cfg := func(c *Config) {
		c.Clock = fixedClock(now)
		c.MeterInterval = 100 * time.Millisecond
	}
	s := startServer(t, dir, cfg)
	ctx := context.Background()
	hooks := make(chan billing.Alert, 100)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a billing.Alert
		if err := json.NewDecoder(r.Body).Decode(&a); err == nil {
			hooks <- a
		}
	}))
	defer hook.Close()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "spender"}); err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "spender", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/s:1"}})
	if err != nil {
		t.Fatal(err)
	}
	budget := billing.BudgetRequest{Monthly: 1, Webhook: hook.URL}
	if err := s.c.PutBudget(ctx, "app", "spender", budget, nil); err != nil {
		t.Fatal(err)
	}
	const batches, perBatch = 20, 500
	step := 16 * 24 * time.Hour / (batches * perBatch)
	at := now.AddDate(0, 0, -16)
	for range batches {
		var recs []billing.Record
		for range perBatch {
			recs = append(recs, billing.Record{ID: billing.MachineRecordID(m.ID, at), Kind: billing.KindMachine, App: "spender", Region: "iad",
				Host: "h", Machine: m.ID, State: api.StateStarted, CPUKind: "shared", CPUs: 1, MemoryMB: 256, Start: at, End: at.Add(step)})
			at = at.Add(step)
		}
		data, _ := json.Marshal(billing.Batch{Host: "h", Records: recs})
		if _, err := s.st.JetStream().Publish(ctx, billing.SubjectPrefix+"h", data); err != nil {
			t.Fatal(err)
		}
	}
	suspended := func(c *api.Client) bool {
		a, err := c.GetApp(ctx, "spender")
		if err != nil {
			t.Fatal(err)
		}
		return a.Suspended != nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for !suspended(s.c) {
		if time.Now().After(deadline) {
			t.Fatal("not suspended 30 s after the records")
		}
		time.Sleep(20 * time.Millisecond) // poll
	}
	var before []int
	for len(before) < 4 { // 50, 80, 100 % and the suspension
		select {
		case a := <-hooks:
			before = append(before, a.Percent)
		case <-time.After(10 * time.Second):
			t.Fatalf("webhook calls before the restart: %v, want 4", before)
		}
	}

	s.stop()
	restarted := time.Now()
	s = startServer(t, dir, cfg)
	// At once: the same budget put again resumes the app if spend reads
	// under it; it must wait for the rebuild.
	var b billing.Budget
	if err := s.c.PutBudget(ctx, "app", "spender", budget, &b); err != nil {
		t.Fatal(err)
	}
	var u billing.Usage
	if err := s.c.Usage(ctx, "app", "spender", "2026-12", &u); err != nil {
		t.Fatal(err)
	}
	t.Logf("after the restart, the budget put and usage answered in %s", time.Since(restarted).Round(time.Millisecond))
	if b.Suspended == nil || !suspended(s.c) {
		t.Error("the app was resumed after the restart: the budget was decided on a ledger still being rebuilt")
	}
	if want := 16 * 86400.0; math.Abs(u.StartedSeconds-want) > 1 {
		t.Errorf("usage right after the restart: %.0f started seconds, want %.0f", u.StartedSeconds, want)
	}
	time.Sleep(500 * time.Millisecond) // five budget rounds
	select {
	case a := <-hooks:
		t.Errorf("an alert was sent again after the restart: %+v", a)
	default:
	}
	// Raising the budget above the spend resumes at once.
	budget.Monthly = 2
	var raised billing.Budget
	if err := s.c.PutBudget(ctx, "app", "spender", budget, &raised); err != nil {
		t.Fatal(err)
	}
	sp, _, _ := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("spender", m.ID))
	if raised.Suspended != nil || suspended(s.c) || sp.Desired != store.DesireStarted {
		t.Errorf("after raising the budget to $2 (spent $1.03): suspended %v, machine desired %s; want resumed at once", suspended(s.c), sp.Desired)
	}
}
