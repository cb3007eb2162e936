package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
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
// stays within an interval of the budget; on 1 January the machines start
// again in their regions and requests succeed.
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
	// Load: both edges, all along; counts by status.
	var ok200, got503 atomic.Int64
	lctx, stopLoad := context.WithCancel(ctx)
	var lwg sync.WaitGroup
	for _, e := range edges {
		lwg.Go(func() {
			for lctx.Err() == nil {
				code, _, _, err := edgeDo(httpClient, "GET", e, "capped", "/")
				switch {
				case err != nil:
				case code == 200:
					ok200.Add(1)
				case code == 503:
					got503.Add(1)
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
		if d := time.Since(at100); region == "iad" && d > interval {
			t.Errorf("503 at %s %s after the 100 %% alert, want within one interval (%s)", region, d, interval)
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
	// records of the stopped machines are in.
	perInterval := 2 * billing.DefaultPrices().RunningPerSecond(guest, "iad") * interval.Seconds() * rate
	var u billing.Usage
	eventually(t, 10*time.Second, "the stopped machines' last records", func() (bool, string) {
		var a, b billing.Usage
		if err := c.Usage(ctx, "app", "capped", "2026-12", &a); err != nil {
			return false, err.Error()
		}
		time.Sleep(2 * interval) // two closes with nothing more started
		if err := c.Usage(ctx, "app", "capped", "2026-12", &b); err != nil {
			return false, err.Error()
		}
		u = b
		return a.Cost == b.Cost, fmt.Sprintf("%v then %v", a.Cost, b.Cost)
	})
	t.Logf("December: spent $%.4f of $%.2f (one interval is $%.4f); %.1f h started; %d requests answered 200, %d 503",
		u.Cost, budget, perInterval, u.StartedSeconds/3600, ok200.Load(), got503.Load())
	if u.Cost < budget || u.Cost > budget+perInterval {
		t.Errorf("spent $%.4f, want between the budget $%.2f and one interval more ($%.4f)", u.Cost, budget, budget+perInterval)
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
}
