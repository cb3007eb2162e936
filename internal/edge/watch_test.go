package edge

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// With a real NATS: records written to the buckets reach the routes, and a
// status change moves the traffic.
func TestStoreChangesRouting(t *testing.T) {
	log := testLog(t)
	nats, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "secret", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	ctx := context.Background()
	st, err := store.Open(ctx, nats.URL(), "secret", "edge-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)

	ams := startMachine(t, "m-ams", "ams", "127.0.0.2", nil)
	fra := startMachine(t, "m-fra", "fra", "127.0.0.3", nil)
	put := func(kv jetstream.KeyValue, key string, v any) {
		t.Helper()
		if _, err := store.Put(ctx, kv, key, v); err != nil {
			t.Fatal(err)
		}
	}
	status := func(m *machine, state string) {
		put(st.Status, "shop."+m.id, store.MachineStatus{ID: m.id, App: "shop", HostID: "h-" + m.region, State: state, Ready: state == api.StateStarted})
	}
	put(st.Apps, "shop", api.App{Name: "shop"})
	for _, m := range []*machine{ams, fra} {
		put(st.Hosts, "h-"+m.region, api.Host{ID: "h-" + m.region, Region: m.region, Status: "up"})
		put(st.Machines, "shop."+m.id, store.MachineSpec{
			ID: m.id, App: "shop", Region: m.region, HostID: "h-" + m.region, PrivateIP: m.ip, Desired: store.DesireStarted,
			Config: api.MachineConfig{Services: []api.Service{{InternalPort: m.port, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}}}}},
		})
		status(m, api.StateStarted)
	}

	e, err := newEdge(Config{Region: "ams", Store: st, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	run(t, e)
	select {
	case <-e.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the edge did not read the buckets in 10s")
	}
	srv := serveEdge(t, e, 80)

	answers := func(want string) func() bool {
		return func() bool {
			res, body := get(t, srv, "shop.perch.local", nil)
			return res.StatusCode == http.StatusOK && answeredBy(t, body).Machine == want
		}
	}
	if !answers("m-ams")() {
		t.Fatal("the machine in ams does not answer once the edge is ready")
	}
	status(ams, api.StateStopped)
	waitFor(t, "fra to answer after the ams machine stopped", answers("m-fra"))

	put(st.Hosts, "h-fra", api.Host{ID: "h-fra", Region: "fra", Status: hostDown})
	waitFor(t, "502 once the fra host is down", func() bool {
		res, _ := get(t, srv, "shop.perch.local", nil)
		return res.StatusCode == http.StatusBadGateway
	})

	status(ams, api.StateStarted)
	waitFor(t, "ams to answer again", answers("m-ams"))

	if err := store.Delete(ctx, st.Apps, "shop"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "404 once the app is deleted", func() bool {
		res, _ := get(t, srv, "shop.perch.local", nil)
		return res.StatusCode == http.StatusNotFound
	})
}
