package devcluster_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// cityLoad plays the clients of one city, sending to its own city's edge
// and recording each response's time to first byte and answering region.
type cityLoad struct {
	city, edge string
	mu         sync.Mutex
	samples    []ttfbSample
	ok, failed atomic.Int64
	failures   []string
}

type ttfbSample struct {
	at     time.Time
	ttfb   time.Duration
	region string
}

// maxAutoscaleRequests bounds the load whatever happens.
const maxAutoscaleRequests = 200_000

func (l *cityLoad) run(app string, workers int, stop <-chan struct{}, deadline time.Time, total *atomic.Int64, wg *sync.WaitGroup) {
	for range workers {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
			defer c.CloseIdleConnections()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if time.Now().After(deadline) || total.Add(1) > maxAutoscaleRequests {
					return
				}
				l.one(c, app)
				time.Sleep(5 * time.Millisecond) // a steady stream per client, not a flood
			}
		})
	}
}

func (l *cityLoad) one(c *http.Client, app string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+l.edge+"/", nil)
	req.Host = app + ".perch.local"
	start := time.Now()
	res, err := c.Do(req) // returns once the response headers are in: time to first byte
	ttfb := time.Since(start)
	if err != nil {
		l.fail(fmt.Sprintf("GET via %s edge: %v", l.city, err))
		return
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, 4096))
	res.Body.Close()
	if err != nil {
		l.fail(fmt.Sprintf("GET via %s edge: reading the body: %v", l.city, err))
		return
	}
	body := string(b)
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(body, "hello from ") {
		l.fail(fmt.Sprintf("GET via %s edge: %d %q (request %s)", l.city, res.StatusCode, body, res.Header.Get("Perch-Request-Id")))
		return
	}
	region := strings.Fields(strings.TrimPrefix(body, "hello from "))[0]
	l.ok.Add(1)
	l.mu.Lock()
	l.samples = append(l.samples, ttfbSample{at: start, ttfb: ttfb, region: region})
	l.mu.Unlock()
}

func (l *cityLoad) fail(s string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 20 {
		l.failures = append(l.failures, time.Now().Format("15:04:05.000")+" "+s)
	}
	l.mu.Unlock()
}

// median TTFB of the samples answered from region (any if "") since t.
func (l *cityLoad) median(since time.Time, region string) (time.Duration, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ds []time.Duration
	for _, s := range l.samples {
		if s.at.After(since) && (region == "" || s.region == region) {
			ds = append(ds, s.ttfb)
		}
	}
	if len(ds) == 0 {
		return 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], len(ds)
}

// lastRegion is the region that answered the newest request.
func (l *cityLoad) lastRegion() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.samples) == 0 {
		return ""
	}
	return l.samples[len(l.samples)-1].region
}

// TestAutoscaleByOrigin: an app deployed only in iad with [autoscale]
// max_machines = 6, and clients in syd, fra and gru each sending to their
// own city's edge over the simulated fiber: the autoscaler sees the demand
// enter there and adds a machine in each of those regions; each city's
// median time to first byte falls by at least 80 %; when the load stops,
// the machines it added are drained and removed after the scale-down
// window; no request fails.
func TestAutoscaleByOrigin(t *testing.T) {
	if testing.Short() {
		t.Skip("a four-region world with load: not in -short")
	}
	const inflation = 1.5
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "syd", "fra", "gru"}, Latency: inflation})
	info := w.Info()
	edges := map[string]string{}
	for _, r := range info.Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
	}
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "near")
	toml := filepath.Join(dir, "perch.toml")
	b, err := os.ReadFile(toml)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, []byte("\n[autoscale]\n  max_machines = 6\n  scale_down_window = \"20s\"\n")...)
	// Scale to zero too: idle machines stop, a request starts one.
	if !bytes.Contains(b, []byte("[http_service]\n")) {
		t.Fatalf("perch launch wrote no [http_service]:\n%s", b)
	}
	b = bytes.Replace(b, []byte("[http_service]\n"), []byte("[http_service]\n  auto_stop_machines = \"stop\"\n  min_machines_running = 0\n  idle_timeout = \"10s\"\n"), 1)
	if err := os.WriteFile(toml, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustPerch(t, w, dir, "deploy")
	if !strings.Contains(out, "autoscaling: min 0, max 6") {
		t.Fatalf("deploy did not apply [autoscale]:\n%s", out)
	}
	// Only iad's edge is asked before the load: a request at another
	// city's edge is demand there, and the autoscaler answers any demand
	// in a region with a machine (autoscale.Decide), which would put one
	// there before the load and leave nothing to measure. The load's own
	// first answers show the other edges reach iad.
	expectAnswer(t, edges["iad"], "near", "iad")
	c := w.Client()
	ctx := context.Background()

	cities := []string{"syd", "fra", "gru"}
	loads := map[string]*cityLoad{}
	stop := make(chan struct{})
	var total atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(4 * time.Minute)
	for _, city := range cities {
		loads[city] = &cityLoad{city: city, edge: edges[city]}
		loads[city].run("near", 3, stop, deadline, &total, &wg)
	}
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	t.Cleanup(stopLoad)

	// Machines appear in each city's region and take its traffic.
	appeared := map[string]time.Duration{}
	local := map[string]time.Duration{}
	eventually(t, 2*time.Minute, "a started machine in syd, fra and gru serving its city", func() (bool, string) {
		ms, err := c.ListMachines(ctx, "near", "")
		if err != nil {
			return false, err.Error()
		}
		var state []string
		for _, city := range cities {
			for _, m := range ms {
				if m.Region == city && m.State == api.StateStarted {
					if _, ok := appeared[city]; !ok {
						appeared[city] = time.Since(start)
					}
				}
			}
			if _, ok := local[city]; !ok && loads[city].lastRegion() == city {
				local[city] = time.Since(start)
			}
			state = append(state, fmt.Sprintf("%s: started after %v, served locally after %v, last from %s", city, appeared[city], local[city], loads[city].lastRegion()))
		}
		return len(local) == len(cities), strings.Join(state, "; ")
	})
	// A few seconds of load served locally, to measure.
	measureFrom := time.Now()
	eventually(t, 30*time.Second, "200 local answers per city", func() (bool, string) {
		var state []string
		done := true
		for _, city := range cities {
			_, n := loads[city].median(measureFrom, city)
			done = done && n >= 200
			state = append(state, fmt.Sprintf("%s %d", city, n))
		}
		return done, strings.Join(state, ", ")
	})
	for _, city := range cities {
		before, nb := loads[city].median(start, "iad")
		after, na := loads[city].median(measureFrom, city)
		drop := 1 - float64(after)/float64(before)
		t.Logf("%s: machine started %v after the load began, served locally after %v; median TTFB from iad %v (%d requests) → from %s %v (%d requests): -%.0f%%",
			city, appeared[city].Round(time.Millisecond), local[city].Round(time.Millisecond), before.Round(time.Microsecond), nb, city, after.Round(time.Microsecond), na, drop*100)
		if nb == 0 || drop < 0.8 {
			t.Errorf("%s: median TTFB fell by %.0f%% (from %v to %v), want at least 80%%", city, drop*100, before, after)
		}
	}
	show := mustPerch(t, w, dir, "autoscale", "show")
	t.Logf("perch autoscale show:\n%s", show)
	for _, city := range cities {
		if !strings.Contains(show, "→ +1 machine in "+city) {
			t.Errorf("autoscale show has no decision adding a machine in %s:\n%s", city, show)
		}
	}

	// Load stops: after the window the added machines go, iad's stays.
	stopLoad()
	var sent, failed int64
	for _, city := range cities {
		sent += loads[city].ok.Load() + loads[city].failed.Load()
		failed += loads[city].failed.Load()
	}
	quiet := time.Now()
	var gone time.Duration
	eventually(t, 2*time.Minute, "the autoscaled machines removed after the window, iad's kept", func() (bool, string) {
		ms, err := c.ListMachines(ctx, "near", "")
		if err != nil {
			return false, err.Error()
		}
		var left []string
		iad := 0
		for _, m := range ms {
			if m.Region == "iad" {
				iad++
			} else {
				left = append(left, m.Region+":"+m.State)
			}
		}
		gone = time.Since(quiet)
		return len(left) == 0 && iad == 1, fmt.Sprintf("iad %d, others %v", iad, left)
	})
	t.Logf("load stopped; autoscaled machines drained and removed %v later (window 20s)", gone.Round(time.Millisecond))
	if gone < 20*time.Second {
		t.Errorf("machines were removed %v after the load stopped, before the 20s window", gone)
	}
	// Then the last machine stops once idle, and the next request starts it.
	eventually(t, time.Minute, "iad's machine stopped when idle", func() (bool, string) {
		ms, err := c.ListMachines(ctx, "near", "iad")
		if err != nil || len(ms) != 1 {
			return false, fmt.Sprintf("%v %v", ms, err)
		}
		return ms[0].State == api.StateStopped, ms[0].State
	})
	t.Logf("the last machine stopped when idle %v after the load stopped", time.Since(quiet).Round(time.Millisecond))
	woke := time.Now()
	req, _ := http.NewRequest("GET", "http://"+edges["syd"]+"/", nil)
	req.Host = "near.perch.local"
	resp, err := (&http.Client{Timeout: 40 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("the first request after the last machine stopped: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "hello from iad ") {
		t.Fatalf("the first request after the last machine stopped: %d %s; want iad's machine started and answering", resp.StatusCode, body)
	}
	t.Logf("a request at the syd edge started iad's stopped machine and was answered in %v", time.Since(woke).Round(time.Millisecond))
	t.Logf("requests: %d sent, %d failed", sent, failed)
	for _, city := range cities {
		for _, f := range loads[city].failures {
			t.Errorf("failed: %s", f)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed", failed, sent)
	}
}
