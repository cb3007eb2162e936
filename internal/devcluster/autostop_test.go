package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// scaleToZeroService is the sample app's HTTP service with autostop
// (stop or suspend) after idle, and autostart.
func scaleToZeroService(mode api.Autostop, idle string) []api.Service {
	return []api.Service{{
		Protocol: "tcp", InternalPort: 8080, Autostop: mode, IdleTimeout: idle,
		Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}},
	}}
}

// createStarted creates a machine of app in region and waits until it is
// started.
func createStarted(t *testing.T, w *devcluster.World, app, region string, cfg api.MachineConfig) *api.Machine {
	t.Helper()
	ctx := context.Background()
	m, err := w.Client().CreateMachine(ctx, app, api.CreateMachineRequest{Region: region, Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Client().WaitMachine(ctx, app, m.ID, api.StateStarted, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	return m
}

// edgeDo sends a request for app to an edge and gives the status, the
// body and the time to the first byte of the answer.
func edgeDo(c *http.Client, method, edgeAddr, app, path string) (int, string, time.Duration, error) {
	req, err := http.NewRequest(method, "http://"+edgeAddr+path, nil)
	if err != nil {
		return 0, "", 0, err
	}
	req.Host = app + ".perch.local"
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	ttfb := time.Since(start)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), ttfb, nil
}

// states counts an app's machines by region and state, e.g. "iad/started".
func states(t *testing.T, w *devcluster.World, app string) map[string]int {
	t.Helper()
	ms, err := w.Client().ListMachines(context.Background(), app, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, m := range ms {
		out[m.Region+"/"+m.State]++
	}
	return out
}

// TestAutostartWakesOne: two hundred concurrent first requests, at iad's
// edge, to an app whose machines (two in iad, one in ams) are all stopped
// are held, wake exactly one machine, in iad, and all succeed. Then a
// request at ams's edge for an app whose only machine is stopped in iad
// starts it through iad's host (one NATS request), and succeeds.
func TestAutostartWakesOne(t *testing.T) {
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	edges := map[string]string{}
	for _, r := range w.Info().Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
	}
	cfg := api.MachineConfig{Image: ref, Services: scaleToZeroService(api.AutostopStop, "10m")}
	for _, app := range []string{"wake", "far"} {
		if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for _, where := range []struct{ app, region string }{{"wake", "iad"}, {"wake", "iad"}, {"wake", "ams"}, {"far", "iad"}} {
		m := createStarted(t, w, where.app, where.region, cfg)
		ids = append(ids, where.app+"/"+m.ID)
	}
	for _, id := range ids {
		app, mid, _ := strings.Cut(id, "/")
		if err := c.StopMachine(ctx, app, mid, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, app, mid, api.StateStopped, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	const n = 200
	client := &http.Client{Timeout: 45 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: 0}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fails []string
	var ttfbs []time.Duration
	start := time.Now()
	for range n {
		wg.Go(func() {
			code, body, ttfb, err := edgeDo(client, "GET", edges["iad"], "wake", "/")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				fails = append(fails, err.Error())
			case code != 200 || !strings.Contains(body, "hello from iad"):
				fails = append(fails, fmt.Sprintf("%d %s", code, body))
			default:
				ttfbs = append(ttfbs, ttfb)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	for _, f := range fails {
		t.Errorf("request failed: %s", f)
	}
	slices.Sort(ttfbs)
	if len(ttfbs) > 0 {
		t.Logf("%d concurrent first requests answered in %v; time to first byte: min %v, median %v, max %v",
			len(ttfbs), took.Round(time.Millisecond), ttfbs[0].Round(time.Millisecond), ttfbs[len(ttfbs)/2].Round(time.Millisecond), ttfbs[len(ttfbs)-1].Round(time.Millisecond))
	}
	got := states(t, w, "wake")
	if got["iad/started"] != 1 || got["iad/stopped"] != 1 || got["ams/stopped"] != 1 {
		t.Fatalf("machines after the burst: %v; want exactly one started, in iad", got)
	}
	ms, _ := c.ListMachines(ctx, "wake", "")
	for _, m := range ms {
		if m.State == api.StateStarted && !strings.Contains(eventsText(m.Events), "started for a request at the iad edge (autostart)") {
			t.Errorf("the woken machine's events do not say why: %s", eventsText(m.Events))
		}
	}

	// Across hosts: ams's edge starts iad's machine through iad's host.
	from := time.Now()
	code, body, ttfb, err := edgeDo(client, "GET", edges["ams"], "far", "/")
	if err != nil || code != 200 || !strings.Contains(body, "hello from iad") {
		t.Fatalf("request at ams for an app stopped in iad: %d %q %v; want iad's answer", code, body, err)
	}
	t.Logf("ams edge → start of iad's machine over NATS → first byte: %v (total %v)", ttfb.Round(time.Millisecond), time.Since(from).Round(time.Millisecond))
	if got := states(t, w, "far"); got["iad/started"] != 1 {
		t.Errorf("far's machines: %v; want its iad machine started", got)
	}

	// Activity through the mesh relay counts: a 5 s request from ams's
	// edge keeps iad's machine (idle timeout 2 s) started until it ends;
	// then the machine stops.
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "relay"}); err != nil {
		t.Fatal(err)
	}
	rm := createStarted(t, w, "relay", "iad", api.MachineConfig{Image: ref, Services: scaleToZeroService(api.AutostopStop, "2s")})
	done := make(chan error, 1)
	go func() {
		code, body, _, err := edgeDo(client, "GET", edges["ams"], "relay", "/sleep/5s")
		if err == nil && code != 200 {
			err = fmt.Errorf("%d %s", code, body)
		}
		done <- err
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("a 5 s request through the relay: %v", err)
			}
			break wait
		case <-tick.C:
			if m, err := c.GetMachine(ctx, "relay", rm.ID); err == nil && m.State != api.StateStarted {
				t.Fatalf("the machine went %s while a request through the relay was in flight: %s", m.State, eventsText(m.Events))
			}
		}
	}
	ended := time.Now()
	eventually(t, 20*time.Second, "the machine stopped once the relayed request ended and 2 s passed", func() (bool, string) {
		m, err := c.GetMachine(ctx, "relay", rm.ID)
		if err != nil {
			return false, err.Error()
		}
		return m.State == api.StateStopped, m.State
	})
	if d := time.Since(ended); d < 2*time.Second {
		t.Errorf("stopped %v after the relayed request ended; want at least the 2 s idle timeout", d)
	}
}

// TestAutostopKeepsMinPerRegion: with min_machines_running = 1, idle
// machines are stopped down to one started machine in each region (iad
// has two, ams one), and no further.
func TestAutostopKeepsMinPerRegion(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "keep"}); err != nil {
		t.Fatal(err)
	}
	one := 1
	svcs := scaleToZeroService(api.AutostopStop, "2s")
	svcs[0].MinMachinesRunning = &one
	for _, region := range []string{"iad", "iad", "ams"} {
		createStarted(t, w, "keep", region, api.MachineConfig{Image: ref, Services: svcs})
	}
	want := map[string]int{"iad/started": 1, "iad/stopped": 1, "ams/started": 1}
	eventually(t, 20*time.Second, "one idle iad machine stopped, one kept in each region", func() (bool, string) {
		got := states(t, w, "keep")
		return fmt.Sprint(got) == fmt.Sprint(want), fmt.Sprint(got)
	})
	// And it stays so for two more idle timeouts (the hosts look again
	// every 2 s, the shorter of the idle timeout and 30 s).
	for until := time.Now().Add(5 * time.Second); time.Now().Before(until); time.Sleep(250 * time.Millisecond) {
		if got := states(t, w, "keep"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("machines went %v; want %v kept for min_machines_running = 1 per region", got, want)
		}
	}
	ms, _ := c.ListMachines(ctx, "keep", "")
	for _, m := range ms {
		if m.State == api.StateStopped && !strings.Contains(eventsText(m.Events), "idle for 2s (autostop)") {
			t.Errorf("the stopped machine's events do not say why: %s", eventsText(m.Events))
		}
	}
}

// TestAutostopIdle: machines with a 2 s idle timeout and no
// min_machines_running are stopped (or suspended) by their host once idle,
// with an event saying so; the next request through the edge starts
// (resumes) them and succeeds. A suspended machine's in-memory counter
// survives; a stopped one boots afresh.
func TestAutostopIdle(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	ids := map[string]string{}
	for app, mode := range map[string]api.Autostop{"sus": api.AutostopSuspend, "stp": api.AutostopStop} {
		if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
			t.Fatal(err)
		}
		m := createStarted(t, w, app, "iad", api.MachineConfig{Image: ref, Guest: api.Guest{MemoryMB: 256}, Services: scaleToZeroService(mode, "2s")})
		ids[app] = m.ID
	}
	client := &http.Client{Timeout: 45 * time.Second}
	for app := range ids {
		for want := 1; want <= 3; want++ {
			var body string
			eventually(t, 30*time.Second, app+": POST /count through the edge", func() (bool, string) {
				code, b, _, err := edgeDo(client, "POST", edge, app, "/count")
				if err != nil {
					return false, err.Error()
				}
				body = strings.TrimSpace(b)
				return code == 200, fmt.Sprintf("%d %s", code, b)
			})
			if body != fmt.Sprint(want) {
				t.Fatalf("%s: POST /count = %q, want %d", app, body, want)
			}
		}
	}
	busyUntil := time.Now()
	want := map[string]string{"sus": api.StateSuspended, "stp": api.StateStopped}
	for app, id := range ids {
		var m *api.Machine
		eventually(t, 30*time.Second, app+": machine stopped by autostop after 2 s idle", func() (bool, string) {
			var err error
			m, err = c.GetMachine(ctx, app, id)
			if err != nil {
				return false, err.Error()
			}
			return m.State == want[app], m.State
		})
		t.Logf("%s: %s %v after its last request", app, m.State, time.Since(busyUntil).Round(time.Millisecond))
		ev := eventsText(m.Events)
		if !strings.Contains(ev, "idle for 2s (autostop)") {
			t.Errorf("%s: events do not say the machine was idle: %s", app, ev)
		}
	}
	if out := mustPerch(t, w, t.TempDir(), "status", "-a", "stp"); !strings.Contains(out, "stopped") {
		t.Errorf("perch status does not show the machine stopped:\n%s", out)
	}

	// The next request starts them again.
	counts := map[string]string{"sus": "3", "stp": "0"}
	for app, id := range ids {
		code, body, ttfb, err := edgeDo(client, "GET", edge, app, "/count")
		if err != nil || code != 200 {
			t.Fatalf("%s: first request after autostop: %d %q %v; want 200", app, code, body, err)
		}
		t.Logf("%s: first request after autostop answered in %v (time to first byte)", app, ttfb.Round(time.Millisecond))
		if got := strings.TrimSpace(body); got != counts[app] {
			t.Errorf("%s: GET /count after the restart = %q, want %s", app, got, counts[app])
		}
		m, _ := c.GetMachine(ctx, app, id)
		if m.State != api.StateStarted || !strings.Contains(eventsText(m.Events), "(autostart)") {
			t.Errorf("%s: after the request the machine is %s with events %s; want started by autostart", app, m.State, eventsText(m.Events))
		}
	}

	// A request that arrives while autostop is stopping the machine (here
	// a request straight to its private address, which autostop does not
	// count, keeps the process exiting for a while after SIGTERM) is held
	// and served by the machine started again.
	sm, err := c.GetMachine(ctx, "stp", ids["stp"])
	if err != nil {
		t.Fatal(err)
	}
	direct := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Get("http://" + sm.PrivateIP + ":8080/sleep/5s")
		if err == nil {
			resp.Body.Close()
		}
		direct <- err
	}()
	eventually(t, 20*time.Second, "autostop stopping the machine while its process finishes a direct request", func() (bool, string) {
		m, err := c.GetMachine(ctx, "stp", ids["stp"])
		if err != nil {
			return false, err.Error()
		}
		return m.State == api.StateStopping, m.State
	})
	code, body, ttfb, err := edgeDo(client, "GET", edge, "stp", "/")
	if err != nil || code != 200 {
		t.Fatalf("a request while autostop stops the machine: %d %q %v; want it held and served", code, body, err)
	}
	t.Logf("a request arriving during an autostop's stop was answered after %v", ttfb.Round(time.Millisecond))
	<-direct

	// Requests that keep arriving around the idle timeout, some while the
	// machine is being stopped or suspended: none fails.
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := 0
	phase := time.Now()
	for app := range ids {
		wg.Go(func() {
			for i := range 8 {
				// The load's own rhythm, not a wait for a condition: gaps
				// just under and over the 2 s idle timeout.
				time.Sleep(1700*time.Millisecond + time.Duration(i%3)*300*time.Millisecond)
				code, body, _, err := edgeDo(client, "GET", edge, app, "/")
				mu.Lock()
				sent++
				if err != nil || code != 200 {
					t.Errorf("%s: request %d around autostop: %d %q %v", app, i, code, body, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	stops := map[string]int{}
	for app, id := range ids {
		m, err := c.GetMachine(ctx, app, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range m.Events {
			if (e.Status == api.StateStopped || e.Status == api.StateSuspended) && strings.Contains(e.Message, "(autostop)") && e.Time().After(phase) {
				stops[app]++
			}
		}
	}
	t.Logf("%d requests around the idle timeout, none failed; autostops meanwhile by app: %v", sent, stops)

	// The same from a fly.toml through perch deploy (whose new machines
	// are out of rotation, so never idle, until their smoke window passed):
	// once the machine is idle it is stopped, and a request starts it.
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "toml")
	path := filepath.Join(dir, "perch.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	toml := strings.Replace(string(b), "[http_service]\n", "[http_service]\n  auto_stop_machines = 'stop'\n  auto_start_machines = true\n  min_machines_running = 0\n  idle_timeout = '2s'\n", 1)
	if toml == string(b) {
		t.Fatalf("perch launch wrote no [http_service]:\n%s", b)
	}
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	mustPerch(t, w, dir, "deploy", "--smoke-window", "3s")
	eventually(t, 20*time.Second, "the deployed machine stopped by autostop", func() (bool, string) {
		got := states(t, w, "toml")
		return got["iad/stopped"] == 1 && len(got) == 1, fmt.Sprint(got)
	})
	if code, body, _, err := edgeDo(client, "GET", edge, "toml", "/"); err != nil || code != 200 || !strings.Contains(body, "hello from iad") {
		t.Errorf("first request to the deployed app after autostop: %d %q %v", code, body, err)
	}
}
