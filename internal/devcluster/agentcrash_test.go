package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// crashLoad is a bounded load loop through one edge that keeps the time of
// every failure, to measure how long a crash takes the edge away.
type crashLoad struct {
	mu           sync.Mutex
	ok, failed   int
	firstFail    time.Time
	lastFail     time.Time
	failures     []string
	lastOKBefore time.Time
	stop         chan struct{}
	wg           sync.WaitGroup
}

func startCrashLoad(edgeAddr, app string, clients int, limit time.Duration) *crashLoad {
	l := &crashLoad{stop: make(chan struct{})}
	deadline := time.Now().Add(limit)
	for range clients {
		l.wg.Go(func() {
			c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer c.CloseIdleConnections()
			for n := 0; n < 100_000 && time.Now().Before(deadline); n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				req, _ := http.NewRequest("GET", "http://"+edgeAddr+"/", nil)
				req.Host = app + ".perch.local"
				res, err := c.Do(req)
				var msg string
				if err == nil {
					b, rerr := io.ReadAll(res.Body)
					res.Body.Close()
					if rerr != nil || res.StatusCode != 200 || !strings.HasPrefix(string(b), "hello from ") {
						msg = fmt.Sprintf("%d %q %v", res.StatusCode, b, rerr)
					}
				} else {
					msg = err.Error()
				}
				now := time.Now()
				l.mu.Lock()
				if msg == "" {
					l.ok++
				} else {
					l.failed++
					if l.firstFail.IsZero() {
						l.firstFail = now
					}
					l.lastFail = now
					if len(l.failures) < 10 {
						l.failures = append(l.failures, now.Format("15:04:05.000")+" "+msg)
					}
				}
				l.mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	return l
}

func (l *crashLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// TestAgentCrashEdgeWindow: kill -9 of the agent under load through its
// region's edge; the world restarts it, the machine runs on under its shim
// and is adopted, and the edge is back within the measured window.
func TestAgentCrashEdgeWindow(t *testing.T) {
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "crashy"}); err != nil {
		t.Fatal(err)
	}
	m := createStarted(t, w, "crashy", "iad", api.MachineConfig{Image: ref, Services: httpService()})
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	expectAnswer(t, edge, "crashy", "iad")
	pidBefore := machinePID(t, w.Info(), "iad")
	agentPID := w.Info().Regions[0].PID

	load := startCrashLoad(edge, "crashy", 4, 60*time.Second)
	time.Sleep(time.Second)
	killed := time.Now()
	if err := w.CrashAgent("iad"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the agent started again", func() (bool, string) {
		return w.AgentRestarts("iad") == 1, fmt.Sprint(w.AgentRestarts("iad"))
	})
	restarted := time.Now()
	expectAnswer(t, edge, "crashy", "iad")
	time.Sleep(2 * time.Second)
	load.finish()
	window := time.Duration(0)
	if !load.lastFail.IsZero() {
		window = load.lastFail.Sub(killed)
	}
	t.Logf("kill -9 of the agent under load: %d ok, %d failed, failures from +%s to +%s after the kill (restart begun +%s); first failures: %s",
		load.ok, load.failed, load.firstFail.Sub(killed).Round(time.Millisecond), window.Round(time.Millisecond),
		restarted.Sub(killed).Round(time.Millisecond), strings.Join(load.failures, "; "))
	if pid := w.Info().Regions[0].PID; pid == agentPID {
		t.Errorf("world.json's agent pid is still the killed one's, %d", pid)
	}
	if pid := machinePID(t, w.Info(), "iad"); pid != pidBefore {
		t.Errorf("the machine's process changed across the crash: pid %d, was %d", pid, pidBefore)
	}
	after, err := c.GetMachine(ctx, "crashy", m.ID)
	if err != nil || after.State != api.StateStarted || after.InstanceID != m.InstanceID {
		t.Errorf("machine after the crash: %+v %v; want instance %s started", after, err, m.InstanceID)
	}
}
