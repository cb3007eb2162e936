package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/devcluster"
)

type hookCall struct {
	at   time.Time
	body []byte
	sig  string
}

// hookServer is a webhook receiver that keeps every call.
type hookServer struct {
	*httptest.Server
	mu    sync.Mutex
	calls []hookCall
}

func newHookServer(t *testing.T) *hookServer {
	h := &hookServer{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.calls = append(h.calls, hookCall{time.Now(), b, r.Header.Get(billing.SignatureHeader)})
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	return h
}

// alerts decodes the calls, checking each signature with secret.
func (h *hookServer) alerts(t *testing.T, secret string) ([]billing.Alert, []time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []billing.Alert
	var at []time.Time
	for _, c := range h.calls {
		if !billing.Verify(secret, c.body, c.sig) {
			t.Fatalf("webhook call with a bad signature %q: %s", c.sig, c.body)
		}
		var a billing.Alert
		if err := json.Unmarshal(c.body, &a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
		at = append(at, c.at)
	}
	return out, at
}

func httpService() []api.Service {
	return []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}}}}
}

// TestBudgetSuspendsAndResumes runs a month in about half a minute (a
// fast clock, 6 h a second, from 25 December): an app with two machines
// (iad, ams) under load and a budget of $0.25 gets signed webhook alerts
// at 50, 80 and 100 %; at 100 % both edges answer 503 with Retry-After
// within one metering interval and every machine stops; the month's spend
// stays within an interval of the budget; Retry-After is the real time
// until the fast clock's 1 January; while suspended the app accrues only
// storage (its stopped machines' own disk); on 1 January the machines
// start again in their regions and requests succeed. Then, in January,
// live load through the iad edge that wants 6 machines meets a budget with
// room for two more: the autoscaler stops there and says why
// (autoscaleStopsAtTheBudget).
func TestBudgetSuspendsAndResumes(t *testing.T) {
	const rate = 6 * 3600.0
	const interval = time.Second
	clock := billing.FastClock{Epoch: time.Now(), Start: time.Date(2026, 12, 25, 0, 0, 0, 0, time.UTC), Rate: rate}
	t.Setenv(billing.ClockEnv, clock.String())
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}, MeterInterval: interval})
	ctx := context.Background()
	c := w.Client()
	hooks := newHookServer(t)
	ref := pushImage(t, w, "hello:v1")
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "capped"}); err != nil {
		t.Fatal(err)
	}
	edges := map[string]string{}
	for _, r := range w.Info().Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
	}
	guest := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256}
	for _, region := range []string{"iad", "ams"} {
		createStarted(t, w, "capped", region, api.MachineConfig{Image: ref, Guest: guest, Services: httpService()})
	}
	// Load: both edges, all along; counts by status, and when each edge
	// first answered with the budget's 503.
	var ok200, got503 atomic.Int64
	var first503 sync.Map // region → time.Time
	lctx, stopLoad := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	for region, e := range edges {
		lwg.Go(func() {
			for lctx.Err() == nil {
				code, body, _, err := edgeDo(httpClient, "GET", e, "capped", "/")
				switch {
				case err != nil:
				case code == 200:
					ok200.Add(1)
				case code == 503:
					got503.Add(1)
					if strings.Contains(body, "monthly budget") {
						first503.LoadOrStore(region, time.Now())
					}
				}
				time.Sleep(20 * time.Millisecond) // pace, not a wait for a condition
			}
		})
	}
	defer func() { stopLoad(); lwg.Wait() }()

	const budget = 0.25
	out := mustPerch(t, w, t.TempDir(), "budget", "set", "--monthly", fmt.Sprint(budget), "--webhook", hooks.URL, "--app", "capped")
	m := regexp.MustCompile(`secret: ([0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("perch budget set printed no webhook secret:\n%s", out)
	}
	secret := m[1]

	// 100 %: the alert, then 503 at both edges within one interval.
	var at100 time.Time
	eventually(t, 60*time.Second, "the 100 % alert", func() (bool, string) {
		as, at := hooks.alerts(t, secret)
		for i, a := range as {
			if a.Type == "budget.alert" && a.Percent == 100 {
				at100 = at[i]
				return true, ""
			}
		}
		return false, fmt.Sprintf("%+v", as)
	})
	for region, e := range edges {
		eventually(t, 10*time.Second, "503 at "+region, func() (bool, string) {
			req, _ := http.NewRequest("GET", "http://"+e+"/", nil)
			req.Host = "capped.perch.local"
			resp, err := httpClient.Do(req)
			if err != nil {
				return false, err.Error()
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			ra := resp.Header.Get("Retry-After")
			return resp.StatusCode == 503 && ra != "" && strings.Contains(string(b), "monthly budget of $0.25 reached"),
				fmt.Sprintf("%d Retry-After %q %s", resp.StatusCode, ra, b)
		})
		var first time.Time
		eventually(t, 5*time.Second, "the load's first 503 at "+region, func() (bool, string) {
			v, ok := first503.Load(region)
			if ok {
				first = v.(time.Time)
			}
			return ok, "none yet"
		})
		if d := first.Sub(at100); d > interval {
			t.Errorf("the load's first 503 at %s came %v after the 100 %% alert, want within one interval (%s)", region, d, interval)
		} else {
			t.Logf("%s: the load's first 503 %v after the 100 %% alert", region, d.Round(time.Millisecond))
		}
	}
	// Retry-After: the real seconds until the fast clock reaches 1 January.
	{
		req, _ := http.NewRequest("GET", "http://"+edges["iad"]+"/", nil)
		req.Host = "capped.perch.local"
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		want := billing.RealUntil(clock, time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)).Seconds()
		t.Logf("Retry-After %d s; the fast clock reaches 1 January in %.1f real seconds", ra, want)
		if math.Abs(float64(ra)-want) > 2 {
			t.Errorf("Retry-After %q, want the real seconds until the fast clock's 1 January (%.1f)", resp.Header.Get("Retry-After"), want)
		}
	}
	eventually(t, 30*time.Second, "every machine stopped", func() (bool, string) {
		s := states(t, w, "capped")
		return s["iad/stopped"] == 1 && s["ams/stopped"] == 1, fmt.Sprint(s)
	})
	st := mustPerch(t, w, t.TempDir(), "status", "--app", "capped")
	if !regexp.MustCompile(`suspended: monthly budget of \$0.25 reached on 2026-12-\d\d; resumes 2027-01-01 00:00 UTC`).MatchString(st) {
		t.Errorf("perch status does not say the app is suspended:\n%s", st)
	}
	as, _ := hooks.alerts(t, secret)
	var pcts []int
	for _, a := range as {
		if a.Type == "budget.alert" {
			pcts = append(pcts, a.Percent)
		}
	}
	if fmt.Sprint(pcts) != "[50 80 100]" {
		t.Errorf("alerts at %v %%, want [50 80 100] once each", pcts)
	}
	// Spend: within one interval's worth of the budget, once the last
	// records of the stopped machines are in; from then on the suspended
	// app accrues only storage (its machines' own disk, stopped).
	perInterval := 2 * billing.DefaultPrices().RunningPerSecond(guest, "iad") * interval.Seconds() * rate
	var u billing.Usage
	eventually(t, 10*time.Second, "the stopped machines' last records, then storage only", func() (bool, string) {
		var a, b billing.Usage
		if err := c.Usage(ctx, "app", "capped", "2026-12", &a); err != nil {
			return false, err.Error()
		}
		time.Sleep(2 * interval) // two closes with nothing more started
		if err := c.Usage(ctx, "app", "capped", "2026-12", &b); err != nil {
			return false, err.Error()
		}
		u = b
		return a.ByKind["compute"] == b.ByKind["compute"] && a.StartedSeconds == b.StartedSeconds &&
				b.ByKind["storage"] > a.ByKind["storage"] && b.StoppedSeconds > a.StoppedSeconds,
			fmt.Sprintf("compute $%v then $%v, storage $%v then $%v, stopped %.0f s then %.0f s",
				a.ByKind["compute"], b.ByKind["compute"], a.ByKind["storage"], b.ByKind["storage"], a.StoppedSeconds, b.StoppedSeconds)
	})
	t.Logf("suspended: storage $%.3g for %.1f h stopped (the machines' own disk at $0.15/GB-month)", u.ByKind["storage"], u.StoppedSeconds/3600)
	t.Logf("December: spent $%.4f of $%.2f (one interval is $%.4f); %.1f h started; %d requests answered 200, %d 503",
		u.Cost, budget, perInterval, u.StartedSeconds/3600, ok200.Load(), got503.Load())
	// At most one interval past the budget for the metering (the interval
	// in which it was crossed), and one more for the suspension's own stop:
	// at 6 h of billing per real second, stopping two machines on a loaded
	// CI machine (load 30) took most of an interval (spent $0.2855 against
	// $0.2823 for one).
	if u.Cost < budget || u.Cost > budget+2*perInterval {
		t.Errorf("spent $%.4f, want between the budget $%.2f and two intervals more ($%.4f)", u.Cost, budget, budget+2*perInterval)
	}
	show := mustPerch(t, w, t.TempDir(), "budget", "show", "--app", "capped")
	for _, want := range []string{"app capped: $0.25 a month", "budget.alert", "budget.suspended", "resumes 2027-01-01 00:00 UTC"} {
		if !strings.Contains(show, want) {
			t.Errorf("perch budget show lacks %q:\n%s", want, show)
		}
	}
	usage := mustPerch(t, w, t.TempDir(), "usage", "--app", "capped", "--month", "2026-12")
	for _, want := range []string{"app capped, 2026-12", "BY REGION", "iad", "ams", "compute"} {
		if !strings.Contains(usage, want) {
			t.Errorf("perch usage lacks %q:\n%s", want, usage)
		}
	}
	for _, bad := range []struct{ args, want string }{
		{"budget set --monthly abc --app capped", "--monthly must be a number of US dollars"},
		{"budget set --monthly -3 --app capped", "--monthly must be above 0"},
		{"budget set --monthly 5 --webhook ftp://hooks.example/x --app capped", "--webhook must be an http:// or https:// URL"},
		{"usage --month 2026-13 --app capped", "want YYYY-MM"},
	} {
		out, err := perch(t, w, t.TempDir(), strings.Fields(bad.args)...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("perch %s: err %v, output %q; want an error saying %q", bad.args, err, out, bad.want)
		}
	}
	if ok200.Load() == 0 || got503.Load() == 0 {
		t.Errorf("load saw %d 200s and %d 503s, want both", ok200.Load(), got503.Load())
	}

	// 1 January: back in iad and ams, requests succeed.
	eventually(t, 60*time.Second, "machines started again in their regions", func() (bool, string) {
		s := states(t, w, "capped")
		return s["iad/started"] == 1 && s["ams/started"] == 1 && len(s) == 2, fmt.Sprint(s)
	})
	for region, e := range edges {
		eventually(t, 20*time.Second, "200 at "+region+" in January", func() (bool, string) {
			code, body, _, err := edgeDo(httpClient, "GET", e, "capped", "/")
			return err == nil && code == 200, fmt.Sprint(code, body, err)
		})
	}
	if now := clock.Now(); billing.MonthOf(now) != "2027-01" {
		t.Errorf("resumed at %s, before the month's end", now)
	}
	autoscaleStopsAtTheBudget(t, w, clock, guest, edges["iad"])
}

// autoscaleStopsAtTheBudget (January, same world): six clients keep a
// request each in flight through the iad edge (/sleep/500ms), which with
// a target of 1.1 requests in flight per machine wants 6 machines in iad;
// the demand reaches the autoscaler only through the edge's perch.demand
// reports. The budget, set now, leaves room for two more machines to the
// month's end (its projection allows the fifth only after half the
// month's remainder, about 50 s at this clock): the autoscaler adds two,
// stops, and its blocked decision says the budget's projection.
func autoscaleStopsAtTheBudget(t *testing.T, w *devcluster.World, clock billing.FastClock, guest api.Guest, edge string) {
	ctx := context.Background()
	c := w.Client()
	var jan billing.Usage
	if err := c.Usage(ctx, "app", "capped", "2027-01", &jan); err != nil {
		t.Fatal(err)
	}
	left := time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC).Sub(clock.Now()).Seconds()
	perMachine := billing.DefaultPrices().RunningPerSecond(guest, "iad") * left
	monthly := math.Round((jan.Cost+4.5*perMachine)*100) / 100
	if err := c.PutBudget(ctx, "app", "capped", billing.BudgetRequest{Monthly: monthly}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetAutoscale(ctx, "capped", api.AutoscaleSettings{MaxMachines: 8, TargetUtilisation: 0.055}); err != nil {
		t.Fatal(err) // of the default soft limit 20: 1.1 requests in flight per machine, so 6 in flight want 6
	}
	t.Logf("January: budget $%.2f (spent $%.3f, a machine costs $%.3f to the month's end)", monthly, jan.Cost, perMachine)
	// The load: bounded in count and time.
	const clients, perClient = 6, 400
	var ok200, sent atomic.Int64
	lctx, stopLoad := context.WithTimeout(ctx, 90*time.Second)
	var lwg sync.WaitGroup
	for range clients {
		lwg.Go(func() {
			for i := 0; i < perClient && lctx.Err() == nil; i++ {
				sent.Add(1)
				if code, _, _, err := edgeDo(httpClient, "GET", edge, "capped", "/sleep/500ms"); err == nil && code == 200 {
					ok200.Add(1)
				}
			}
		})
	}
	defer func() { stopLoad(); lwg.Wait() }()
	var a *api.Autoscale
	var n int
	eventually(t, 60*time.Second, "the autoscaler blocked by the budget", func() (bool, string) {
		var err error
		if a, err = c.GetAutoscale(ctx, "capped"); err != nil {
			return false, err.Error()
		}
		ms, err := c.ListMachines(ctx, "capped", "")
		if err != nil {
			return false, err.Error()
		}
		n = len(ms)
		if n > 4 {
			t.Fatalf("%d machines: the autoscaler went past the budget's projection (4 fit); decisions %+v", n, a.Decisions)
		}
		for _, d := range a.Decisions {
			if d.Blocked != "" && n == 4 {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d machines, regions %+v, decisions %+v", n, a.Regions, a.Decisions)
	})
	var blocked api.AutoscaleDecision
	for _, d := range a.Decisions {
		if d.Blocked != "" {
			blocked = d
		}
	}
	desired := 0
	for _, r := range a.Regions {
		if r.Region == "iad" {
			desired = r.Desired
		}
	}
	t.Logf("blocked decision: %s %d → %d: %s (blocked: %s); %d requests sent, %d answered 200", blocked.Region, blocked.From, blocked.To,
		blocked.Reason, blocked.Blocked, sent.Load(), ok200.Load())
	if blocked.Region != "iad" || blocked.To < 6 || desired < 6 {
		t.Errorf("the blocked decision is %s %d → %d, iad desired %d; want the edge's load to want 6 in iad", blocked.Region, blocked.From, blocked.To, desired)
	}
	if !strings.Contains(blocked.Blocked, "projected spend") || !strings.Contains(blocked.Blocked, fmt.Sprintf("monthly budget of $%g", monthly)) {
		t.Errorf("the decision says %q, want the budget's projection", blocked.Blocked)
	}
	// Two more rounds (5 s each) under the same load: still 4.
	next := time.Now().Add(2 * 5 * time.Second)
	for time.Now().Before(next) {
		time.Sleep(time.Second) // the autoscaler's rounds, not a condition
	}
	if ms, err := c.ListMachines(ctx, "capped", ""); err != nil || len(ms) != 4 {
		t.Errorf("%d machines two rounds later (%v), want 4", len(ms), err)
	}
}
