package autoscale

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// harness is an in-memory Cluster (the control plane's side is tested end
// to end in devcluster); the state store is a real embedded NATS.
type harness struct {
	mu       sync.Mutex
	machines []api.Machine
	n        int
}

func (h *harness) Machines(context.Context, string) ([]api.Machine, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]api.Machine(nil), h.machines...), nil
}
func (h *harness) HostRegions(context.Context) ([]string, error) {
	return []string{"iad", "syd", "fra"}, nil
}
func (h *harness) CreateMachine(_ context.Context, app, region string, cfg api.MachineConfig) (api.Machine, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	m := api.Machine{ID: fmt.Sprintf("m%d", h.n), AppName: app, Region: region, State: api.StateStarted, Config: cfg, CreatedAt: time.Now()}
	h.machines = append(h.machines, m)
	return m, nil
}
func (h *harness) DestroyMachine(_ context.Context, _, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, m := range h.machines {
		if m.ID == id {
			h.machines = append(h.machines[:i], h.machines[i+1:]...)
		}
	}
	return nil
}
func (h *harness) count(region string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, m := range h.machines {
		if m.Region == region {
			n++
		}
	}
	return n
}

type denyIn string

func (d denyIn) Allow(_ context.Context, _, region string, _ api.Guest) (bool, string, error) {
	if region == string(d) {
		return false, "over the budget in " + region, nil
	}
	return true, "", nil
}

// TestLoopAddsWhereDemandEntersAndAsksTheLimiter: demand published by the
// syd and fra edges makes the loop add a machine in syd (a copy of the
// user's machine, marked as the autoscaler's); fra's is refused by the
// Limiter, recorded once as a blocked decision; when demand stops, only
// the added machine goes, after the window.
func TestLoopAddsWhereDemandEntersAndAsksTheLimiter(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv, err := store.RunEmbedded(t.TempDir(), addr, "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, srv.URL(), "tok", "loop-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	// A web machine, and a newer worker (a process group with no
	// service): the autoscaler copies and counts only the web one.
	web := api.MachineConfig{Image: "hello:v1", Services: []api.Service{{Protocol: "tcp", InternalPort: 8080}}}
	worker := api.MachineConfig{Image: "hello:v1", Metadata: map[string]string{"fly_process_group": "worker"}}
	h := &harness{machines: []api.Machine{
		{ID: "user1", Region: "iad", State: api.StateStarted, Config: web, CreatedAt: time.Now().Add(-time.Minute)},
		{ID: "worker1", Region: "iad", State: api.StateStarted, Config: worker, CreatedAt: time.Now()},
	}}
	if _, err := store.Put(ctx, st.Autoscale, "web", store.AutoscaleRecord{App: "web", Settings: api.AutoscaleSettings{MaxMachines: 6, ScaleDownWindow: "1s"}}); err != nil {
		t.Fatal(err)
	}
	loop := NewLoop(LoopConfig{Store: st, Cluster: h, Limiter: denyIn("fra"), Interval: 100 * time.Millisecond})
	done := make(chan struct{})
	go func() { defer close(done); loop.Run(ctx) }()
	defer func() { cancel(); <-done }()

	publish := func(region string, conc float64) {
		b, _ := json.Marshal(store.DemandReport{Region: region, HostID: "h-" + region, At: time.Now(), Interval: 2,
			Apps: []store.AppDemand{{App: "web", RPS: 30, Concurrency: conc, LatencyMS: 236, ServedBy: map[string]int64{"iad": 60}}}})
		st.Conn().Publish(store.DemandSubject(region, "h-"+region), b)
	}
	deadline := time.Now().Add(20 * time.Second)
	for h.count("syd") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no machine added in syd within 20s of its demand")
		}
		publish("syd", 5)
		publish("fra", 5)
		time.Sleep(50 * time.Millisecond) // the edges' reports, sped up
	}
	ms, _ := h.Machines(ctx, "web")
	for _, m := range ms {
		if m.Region == "syd" && (m.Config.Image != "hello:v1" || len(m.Config.Services) != 1 || m.Config.Metadata[api.MetadataAutoscaled] != "true") {
			t.Errorf("syd machine %+v: want a copy of the user's web config marked %s", m.Config, api.MetadataAutoscaled)
		}
	}
	if h.count("fra") != 0 {
		t.Error("a machine was added in fra although the Limiter refused it")
	}
	var rec store.AutoscaleRecord
	for time.Now().Before(deadline) {
		rec, _, err = store.Get[store.AutoscaleRecord](ctx, st.Autoscale, "web")
		if err == nil && strings.Contains(fmt.Sprint(rec.Decisions), "over the budget in fra") {
			break
		}
		publish("fra", 5)
		time.Sleep(50 * time.Millisecond)
	}
	blocked := 0
	for _, d := range rec.Decisions {
		if d.Region == "fra" {
			blocked++
			if d.Blocked != "limiter: over the budget in fra" {
				t.Errorf("fra decision %+v: want it blocked by the limiter", d)
			}
		}
		if d.Region == "syd" && !strings.Contains(d.Reason, "served from iad at 236 ms → +1 machine in syd") {
			t.Errorf("syd decision reason %q", d.Reason)
		}
	}
	if blocked != 1 {
		t.Errorf("%d blocked decisions recorded for fra, want it once: %+v", blocked, rec.Decisions)
	}

	// No more demand: the added machine goes after the window, the user's stays.
	for h.count("syd") != 0 {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatal("the syd machine was not removed after demand stopped")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h.count("iad") != 2 {
		t.Errorf("iad has %d machines, want the user's two kept", h.count("iad"))
	}

	// A report counts for the region and host its subject names (a host
	// may publish only its own), whatever its body claims.
	forged, _ := json.Marshal(store.DemandReport{Region: "syd", HostID: "h-syd", At: time.Now(), Interval: 2,
		Apps: []store.AppDemand{{App: "api", RPS: 7}}})
	var got map[string]Demand
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		st.Conn().Publish(store.DemandSubject("iad", "h-iad"), forged)
		if got = loop.Demand("api"); len(got) > 0 {
			break
		}
	}
	if len(got) != 1 || got["iad"].RPS != 7 {
		t.Errorf("a report on %s whose body says syd: demand %+v, want 7 req/s from iad only", store.DemandSubject("iad", "h-iad"), got)
	}
}
