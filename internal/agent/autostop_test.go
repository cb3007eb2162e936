package agent

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

func TestAutostopPolicy(t *testing.T) {
	one, three := 1, 3
	for _, tc := range []struct {
		name string
		svcs []api.Service
		want autostopPolicy
		on   bool
	}{
		{"no autostop", []api.Service{{Autostop: api.AutostopOff}, {}}, autostopPolicy{}, false},
		{"default idle timeout", []api.Service{{Autostop: api.AutostopStop}}, autostopPolicy{api.AutostopStop, api.DefaultIdleTimeout, 0}, true},
		{"shortest idle, suspend wins, highest min", []api.Service{
			{Autostop: api.AutostopStop, IdleTimeout: "2s", MinMachinesRunning: &one},
			{Autostop: api.AutostopSuspend, IdleTimeout: "1m", MinMachinesRunning: &three},
			{Autostop: api.AutostopOff, IdleTimeout: "1s"},
		}, autostopPolicy{api.AutostopSuspend, 2 * time.Second, 3}, true},
	} {
		got, on := autostopOf(api.MachineConfig{Services: tc.svcs})
		if got != tc.want || on != tc.on {
			t.Errorf("%s: %+v %v; want %+v %v", tc.name, got, on, tc.want, tc.on)
		}
	}
}

// TestIdleClock: a machine is idle only when nothing is in flight and
// nothing ended for the whole timeout, counted from when it came into
// rotation at the earliest.
func TestIdleClock(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	c := &idleClock{since: t0}
	c.observe(at(1), 0, time.Time{}) // never used
	if c.due(at(1.9), 2*time.Second) || !c.due(at(2), 2*time.Second) {
		t.Error("a machine never used is idle from when it came into rotation")
	}
	c = &idleClock{since: t0}
	c.observe(at(1), 1, time.Time{}) // a request in flight
	c.observe(at(2.5), 1, time.Time{})
	if c.due(at(4), 2*time.Second) {
		t.Error("idle 1.5 s after a request seen in flight at 2.5 s")
	}
	c.observe(at(3), 0, at(2.8)) // it ended at 2.8
	if c.due(at(4.7), 2*time.Second) || !c.due(at(4.8), 2*time.Second) {
		t.Error("idle is counted from the end of the last request")
	}
	c.retryAt = at(10)
	if c.due(at(9), 2*time.Second) {
		t.Error("a machine kept for the minimum is not asked about before its retry time")
	}
}

func TestStartedInRegion(t *testing.T) {
	spec := func(id, region, desired string, gen int64) store.MachineSpec {
		return store.MachineSpec{ID: id, Region: region, Desired: desired, Generation: gen}
	}
	stat := func(id, state string, gen int64) store.MachineStatus {
		return store.MachineStatus{ID: id, State: state, Generation: gen}
	}
	specs := []store.MachineSpec{
		spec("a", "iad", store.DesireStarted, 2),
		spec("b", "iad", store.DesireStarted, 3), // answered an older generation
		spec("c", "iad", store.DesireStopped, 4),
		spec("d", "iad", store.DesireStarted, 1), // failed
		spec("e", "fra", store.DesireStarted, 1),
		spec("f", "iad", store.DesireStarted, 1),
	}
	statuses := []store.MachineStatus{
		stat("a", api.StateStarted, 2), stat("b", api.StateStarted, 2), stat("c", api.StateStarted, 3),
		stat("d", api.StateFailed, 1), stat("e", api.StateStarted, 1), stat("f", api.StateStarted, 1),
	}
	if n := startedIn("iad", specs, statuses); n != 2 {
		t.Errorf("started in iad: %d; want 2 (a, f)", n)
	}
	if n := startedIn("fra", specs, statuses); n != 1 {
		t.Errorf("started in fra: %d; want 1", n)
	}
}

// TestAutostopKeepsMinPerRegion: two hosts of one region, each with an
// idle machine of an app with min_machines_running = 1, decide at the
// same moment: exactly one machine is stopped, with the reason in its
// spec, and the other is kept. A machine in another region is counted
// for its own region only.
func TestAutostopKeepsMinPerRegion(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	one := 1
	cfg := api.MachineConfig{Services: []api.Service{{InternalPort: 8080, Autostop: api.AutostopStop, IdleTimeout: "2s", MinMachinesRunning: &one}}}
	var workers []*worker
	for _, m := range []struct{ id, host, region string }{{"m1", "h1", "iad"}, {"m2", "h2", "iad"}, {"m3", "h3", "fra"}} {
		spec := store.MachineSpec{ID: m.id, App: "zz", Region: m.region, HostID: m.host, Config: cfg, Desired: store.DesireStarted, Generation: 1}
		if _, err := store.Put(ctx, st.Machines, spec.Key(), spec); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Put(ctx, st.Status, spec.Key(), store.MachineStatus{ID: m.id, App: "zz", HostID: m.host, State: api.StateStarted, Generation: 1}); err != nil {
			t.Fatal(err)
		}
		a := &Agent{st: st, log: slog.New(slog.DiscardHandler), host: api.Host{ID: m.host, Region: m.region}}
		workers = append(workers, &worker{a: a, id: m.id, key: spec.Key(), spec: spec, log: a.log})
	}
	pol, _ := autostopOf(cfg)
	type result struct {
		stopped bool
		why     string
	}
	results := make([]result, 2)
	var wg sync.WaitGroup
	for i, w := range workers[:2] {
		wg.Go(func() {
			// A host that finds the lock taken tries again on a later tick.
			for {
				stopped, why := w.a.autostop(ctx, w, pol)
				if strings.Contains(why, "another host") {
					continue
				}
				results[i] = result{stopped, why}
				return
			}
		})
	}
	wg.Wait()
	stopped := 0
	for i, r := range results {
		t.Logf("%s: stopped %v (%s)", workers[i].id, r.stopped, r.why)
		if r.stopped {
			stopped++
		} else if !strings.Contains(r.why, "min_machines_running is 1 and 1 machine(s) of the app are started in iad") {
			t.Errorf("%s kept for %q; want the minimum as the reason", workers[i].id, r.why)
		}
	}
	if stopped != 1 {
		t.Fatalf("%d machines of iad stopped; want exactly 1 (min_machines_running = 1)", stopped)
	}
	specs, err := store.List[store.MachineSpec](ctx, st.Machines, "zz.*")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if s.Desired == store.DesireStopped && (s.Generation != 2 || s.Why() != "idle for 2s (autostop)") {
			t.Errorf("stopped spec %+v; want generation 2 and reason \"idle for 2s (autostop)\"", s)
		}
	}
	// fra's only machine is kept too: its region's minimum.
	if stopped, why := workers[2].a.autostop(ctx, workers[2], pol); stopped || !strings.Contains(why, "started in fra") {
		t.Errorf("fra's only machine: stopped %v (%s); want kept for fra's minimum", stopped, why)
	}
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, srv.URL(), "tok", "autostop-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}
