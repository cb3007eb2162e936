// Command agentkill measures what a kill -9 of a host's agent costs its
// region's edge (issue 18): under a steady load through the edge, the
// agent is killed with SIGKILL, and the failed requests and the failure
// window (kill to the last failed request) are counted. Two sides in the
// same world: "supervised", the dev world starting the agent again at once
// as systemd's Restart=always does (docs/servers.md), and "unsupervised",
// nothing restarting it for -down (what a dev world did before), after
// which it is started by hand. In both the world keeps the edge's
// listening sockets (package fdstore), so the cost shows as the slowest
// request (how long requests waited) rather than failures, unless the
// wait outlasts the clients' timeout. It needs root; bench/README.md
// records the output.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/bench/internal/benchworld"
	"github.com/perchhq/perch/internal/api"
)

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	rounds := flag.Int("n", 5, "supervised kills")
	clients := flag.Int("clients", 4, "concurrent clients, each a request after another (5 ms apart)")
	down := flag.Duration("down", 5*time.Second, "how long the unsupervised agent stays dead")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, network namespaces)")
	}
	ctx := context.Background()
	w, err := benchworld.Start(ctx, *perch, []string{"iad"})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	ref, err := w.PushHello("agentkill")
	if err != nil {
		log.Fatal(err)
	}
	c := w.Client()
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "killed"}); err != nil {
		log.Fatal(err)
	}
	m, err := c.CreateMachine(ctx, "killed", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: ref,
		Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}}}}}})
	if err != nil {
		log.Fatal(err)
	}
	if err := c.WaitMachine(ctx, "killed", m.ID, api.StateStarted, 2*time.Minute); err != nil {
		log.Fatal(err)
	}
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	waitServing(edge, time.Minute)
	host, _ := os.Hostname()
	fmt.Printf("machine: %s; one region (iad), one machine; %d clients through its edge, keep-alive, 3 s timeout\n\n", host, *clients)

	var windows, slowest []time.Duration
	fmt.Println("supervised (the world starts the killed agent again at once):")
	for i := range *rounds {
		l := startLoad(edge, *clients)
		time.Sleep(time.Second)
		killed := time.Now()
		if err := w.CrashAgent("iad"); err != nil {
			log.Fatal(err)
		}
		for w.AgentRestarts("iad") < i+1 {
			time.Sleep(10 * time.Millisecond)
		}
		waitServing(edge, time.Minute)
		time.Sleep(2 * time.Second)
		l.finish()
		win := l.window(killed)
		windows = append(windows, win)
		slowest = append(slowest, l.slowest)
		fmt.Printf("  kill %d: %d of %d requests failed (%.1f %%), window %s, slowest request %s; %v\n", i+1, l.failed, l.ok+l.failed, 100*float64(l.failed)/float64(l.ok+l.failed), win.Round(time.Millisecond), l.slowest.Round(time.Millisecond), l.reasons)
		// A death within 10 s of the last counts as a crash loop (a
		// delay before the next start): let the agent run past that.
		time.Sleep(10 * time.Second)
	}
	slices.Sort(windows)
	slices.Sort(slowest)
	fmt.Printf("  failure window: median %s, max %s; slowest request: median %s, max %s\n\n",
		windows[len(windows)/2].Round(time.Millisecond), windows[len(windows)-1].Round(time.Millisecond),
		slowest[len(slowest)/2].Round(time.Millisecond), slowest[len(slowest)-1].Round(time.Millisecond))

	fmt.Printf("unsupervised (killed, nothing starts it for %s, then started by hand):\n", *down)
	l := startLoad(edge, *clients)
	time.Sleep(time.Second)
	killed := time.Now()
	if err := w.KillAgent("iad"); err != nil {
		log.Fatal(err)
	}
	time.Sleep(*down)
	if err := w.StartAgent(ctx, "iad"); err != nil {
		log.Fatal(err)
	}
	waitServing(edge, time.Minute)
	time.Sleep(2 * time.Second)
	l.finish()
	fmt.Printf("  %d of %d requests failed (%.1f %%), window %s, slowest request %s; %v\n", l.failed, l.ok+l.failed, 100*float64(l.failed)/float64(l.ok+l.failed), l.window(killed).Round(time.Millisecond), l.slowest.Round(time.Millisecond), l.reasons)
}

func waitServing(edge string, limit time.Duration) {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if ok, _ := get(c, edge); ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	log.Fatalf("the edge %s does not answer", edge)
}

func get(c *http.Client, edge string) (bool, string) {
	req, _ := http.NewRequest("GET", "http://"+edge+"/", nil)
	req.Host = "killed.perch.local"
	res, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != 200 || !strings.HasPrefix(string(b), "hello from ") {
		return false, fmt.Sprintf("%d %q %v", res.StatusCode, b, err)
	}
	return true, ""
}

type load struct {
	mu         sync.Mutex
	ok, failed int
	lastFail   time.Time
	reasons    map[string]int
	slowest    time.Duration // the longest request (ok or not)
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(edge string, clients int) *load {
	l := &load{stop: make(chan struct{}), reasons: map[string]int{}}
	for range clients {
		l.wg.Go(func() {
			c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer c.CloseIdleConnections()
			for n := 0; n < 200_000; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				t0 := time.Now()
				ok, why := get(c, edge)
				took := time.Since(t0)
				l.mu.Lock()
				l.slowest = max(l.slowest, took)
				if ok {
					l.ok++
				} else {
					l.failed++
					l.lastFail = time.Now()
					l.reasons[reason(why)]++
				}
				l.mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	return l
}

func (l *load) finish() { close(l.stop); l.wg.Wait() }

// window is the time from the kill to the last failed request (0: none).
func (l *load) window(killed time.Time) time.Duration {
	if l.lastFail.IsZero() {
		return 0
	}
	return l.lastFail.Sub(killed)
}

// reason is the kind of a failure, for the counts by kind.
func reason(why string) string {
	for _, k := range []string{"connection refused", "connection reset", "EOF", "Timeout", "timeout"} {
		if strings.Contains(why, k) {
			return k
		}
	}
	if len(why) > 40 {
		why = why[:40]
	}
	return why
}
