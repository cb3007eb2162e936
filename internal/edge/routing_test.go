package edge

import (
	"net/http"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

func TestRoutesByHostHeader(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop", "www.shop.example", "Shop.Example.")
	w.app("blog")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.place("blog", startMachine(t, "b1", "ams", "127.0.0.3", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	for host, want := range map[string]string{
		"shop.perch.local":      "s1",
		"blog.perch.local":      "b1",
		"BLOG.Perch.Local:8080": "b1", // case and port do not matter
		"www.shop.example":      "s1",
		"shop.example":          "s1",
		"shop.example.":         "s1",
	} {
		res, body := get(t, srv, host, nil)
		if res.StatusCode != http.StatusOK {
			t.Errorf("Host %s: status %d, body %q", host, res.StatusCode, body)
			continue
		}
		if got := answeredBy(t, body); got.Machine != want || got.Host != host {
			t.Errorf("Host %s: answered by %s seeing Host %q, want %s seeing the client's Host", host, got.Machine, got.Host, want)
		}
	}
}

func TestUnknownHostIs404(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	for host, want := range map[string]string{
		"nope.perch.local": `perch: no app is named "nope"`,
		"example.com":      `perch: no app answers to host "example.com"`,
	} {
		res, body := get(t, srv, host, nil)
		if res.StatusCode != http.StatusNotFound || !strings.Contains(body, want) || !strings.Contains(body, "<app name>.perch.local") {
			t.Errorf("Host %s: got %d %q, want 404 saying %s and how hosts are formed", host, res.StatusCode, body, want)
		}
		if res.Header.Get(hdrRequestID) == "" {
			t.Errorf("Host %s: 404 has no %s", host, hdrRequestID)
		}
	}
}

func TestNoStartedMachineIs502(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), 80, api.StateStopped)
	w.commit()

	res, body := get(t, w.serve(80), "shop.perch.local", nil)
	want := `perch: app "shop" has no started machine`
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(body, want) || !strings.Contains(body, "perch status") {
		t.Errorf("got %d %q, want 502 saying %s and pointing to perch status", res.StatusCode, body, want)
	}
	if res.Header.Get(hdrRequestID) == "" {
		t.Errorf("502 has no %s", hdrRequestID)
	}
}

func TestPortWithoutServiceIs404(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.commit()

	res, body := get(t, w.serve(8080), "shop.perch.local", nil)
	if want := `app "shop" has no HTTP service on port 8080`; res.StatusCode != http.StatusNotFound || !strings.Contains(body, want) {
		t.Errorf("got %d %q, want 404 saying %s", res.StatusCode, body, want)
	}
}

// The edge in ams prefers its own machine, then the nearest region: fra
// (about 360 km) before iad (about 6,200 km).
func TestPrefersOwnRegionThenNearest(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	ams := startMachine(t, "m-ams", "ams", "127.0.0.2", nil)
	fra := startMachine(t, "m-fra", "fra", "127.0.0.3", nil)
	iad := startMachine(t, "m-iad", "iad", "127.0.0.4", nil)
	for _, m := range []*machine{iad, fra, ams} {
		w.place("shop", m, 80, api.StateStarted)
	}
	w.commit()
	srv := w.serve(80)

	expect := func(want string) {
		t.Helper()
		for range 3 {
			res, body := get(t, srv, "shop.perch.local", nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("status %d %q, want an answer from %s", res.StatusCode, body, want)
			}
			if got := answeredBy(t, body).Machine; got != want {
				t.Fatalf("answered by %s, want %s", got, want)
			}
		}
	}
	expect("m-ams")
	w.state("shop", ams, api.StateStopping)
	w.commit()
	expect("m-fra")
	w.state("shop", fra, api.StateFailed)
	w.commit()
	expect("m-iad")
	w.state("shop", ams, api.StateStarted)
	w.commit()
	expect("m-ams")
}

func TestDownHostIsOutOfRotation(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", startMachine(t, "m-ams", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.place("shop", startMachine(t, "m-fra", "fra", "127.0.0.3", nil), 80, api.StateStarted)
	w.host("ams", hostDown)
	w.commit()

	res, body := get(t, w.serve(80), "shop.perch.local", nil)
	if res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "m-fra" {
		t.Errorf("got %d %q, want m-fra to answer while the ams host is down", res.StatusCode, body)
	}
}

func TestMachineNotMeantToRunIsOutOfRotation(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	m := startMachine(t, "m-ams", "ams", "127.0.0.2", nil)
	w.place("shop", m, 80, api.StateStarted)
	spec := w.e.table.machines["shop.m-ams"]
	spec.Desired = "stopped" // the control plane asked; the host has not acted yet
	w.e.table.setMachine("shop.m-ams", spec)
	w.commit()

	if res, body := get(t, w.serve(80), "shop.perch.local", nil); res.StatusCode != http.StatusBadGateway {
		t.Errorf("got %d %q, want 502 for a machine being stopped", res.StatusCode, body)
	}
}

func TestRoundRobinAmongNearest(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	var ms []*machine
	for i, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		m := startMachine(t, "m"+string(rune('1'+i)), "ams", ip, nil)
		ms = append(ms, m)
		w.place("shop", m, 80, api.StateStarted)
	}
	far := startMachine(t, "far", "sin", "127.0.0.5", nil)
	w.place("shop", far, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	for range 30 {
		if res, body := get(t, srv, "shop.perch.local", nil); res.StatusCode != http.StatusOK {
			t.Fatalf("status %d %q", res.StatusCode, body)
		}
	}
	for _, m := range ms {
		if n := m.hits.Load(); n != 10 {
			t.Errorf("machine %s got %d of 30 requests, want 10", m.id, n)
		}
	}
	if n := far.hits.Load(); n != 0 {
		t.Errorf("the machine in sin got %d requests while ams had machines", n)
	}
}

func TestPortsWithUnservedChainsStayClosed(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	m := startMachine(t, "s1", "ams", "127.0.0.2", nil)
	w.place("shop", m, 80, api.StateStarted)
	spec := w.e.table.machines["shop.s1"]
	spec.Config.Services[0].Ports = append(spec.Config.Services[0].Ports,
		api.Port{Port: 443, Handlers: []string{"tls", "http"}},
		api.Port{Port: 5432, Handlers: []string{"pg_tls"}},
		api.Port{Port: 8080, Handlers: []string{"http", "proxy_proto"}})
	w.e.table.setMachine("shop.s1", spec)
	s := w.e.table.commit()
	if got := s.Ports(); len(got) != 2 || got[0] != 80 || got[1] != 443 {
		t.Errorf("served ports %v, want [80 443]: pg_tls and http with proxy_proto are not chains the edge serves", got)
	}
}
