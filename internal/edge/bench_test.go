package edge

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// benchEdge is an edge in ams whose table holds 1,000 apps with 3 started
// machines each in ams, fra and iad; no machine runs.
func benchEdge(b *testing.B) *Edge {
	e, err := newEdge(Config{Region: "ams", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	t := e.table
	for _, r := range []string{"ams", "fra", "iad"} {
		t.setHost("h-"+r, api.Host{ID: "h-" + r, Region: r, Status: "up"})
	}
	for i := range 1000 {
		app := fmt.Sprintf("app%d", i)
		t.setApp(app, api.App{Name: app, Hostnames: []string{app + ".example.com"}})
		for j, r := range []string{"ams", "ams", "ams", "fra", "fra", "fra", "iad", "iad", "iad"} {
			id := fmt.Sprintf("m%d", j)
			key := store.MachineKey(app, id)
			t.setMachine(key, store.MachineSpec{
				ID: id, App: app, Region: r, HostID: "h-" + r, PrivateIP: fmt.Sprintf("10.0.%d.%d", i%250, j+2), Desired: store.DesireStarted,
				Config: api.MachineConfig{Services: []api.Service{{InternalPort: 8080, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}}}}},
			})
			t.setStatus(key, store.MachineStatus{ID: id, App: app, HostID: "h-" + r, State: api.StateStarted, Ready: true})
		}
	}
	t.commit()
	return e
}

// BenchmarkRoute is the routing decision of one request: load the snapshot,
// find the app by Host header, pick a machine, take and give back a slot.
func BenchmarkRoute(b *testing.B) {
	e := benchEdge(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			app := e.table.Snapshot().names[normalizeHost("app517.perch.local:80")]
			m := app.ports[80].pick(nil)
			if m == nil || !m.load.tryAcquire(m.hard) || m.Target.Region != "ams" {
				b.Error("picked no machine or one outside ams")
				return
			}
			m.load.release()
		}
	})
}

// BenchmarkRebuild is the cost of one change to that table.
func BenchmarkRebuild(b *testing.B) {
	e := benchEdge(b)
	b.ReportAllocs()
	for b.Loop() {
		e.table.commit()
	}
}

// BenchmarkProxy is a whole request through the edge to a machine on
// loopback, for scale.
func BenchmarkProxy(b *testing.B) {
	m := startMachine(b, "m1", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	e := benchEdge(b)
	e.table.setMachine("app1.m1", store.MachineSpec{
		ID: "m1", App: "app1", Region: "ams", HostID: "h-ams", PrivateIP: m.ip, Desired: store.DesireStarted,
		Config: api.MachineConfig{Services: []api.Service{{InternalPort: m.port, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}}}}},
	})
	for _, id := range []string{"m0", "m2"} {
		e.table.removeStatus("app1." + id)
	}
	e.table.commit()
	srv := httptest.NewServer(e.Handler(80))
	b.Cleanup(srv.Close)
	c := srv.Client()
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest("GET", srv.URL+"/", nil)
		req.Host = "app1.perch.local"
		res, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			b.Fatalf("status %d", res.StatusCode)
		}
	}
}
