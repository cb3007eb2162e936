package server

import (
	"context"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

func svc(ports ...api.Port) api.MachineConfig {
	return api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 64}, Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: ports}}}
}

func port(p int, handlers ...string) api.Port { return api.Port{Port: p, Handlers: handlers} }

// Apps share the edge's address: HTTP and TLS ports are shared by Host and
// SNI, a raw TCP port belongs to one app, and the API says so.
func TestRawTCPPortsAreNotShared(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, a := range []string{"web", "blog", "db", "cache", "vault"} {
		s.c.CreateApp(ctx, api.CreateAppRequest{AppName: a})
	}
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192})
	create := func(app string, cfg api.MachineConfig) (*api.Machine, error) {
		return s.c.CreateMachine(ctx, app, api.CreateMachineRequest{Region: "iad", Config: cfg})
	}
	mustCreate := func(app string, cfg api.MachineConfig) *api.Machine {
		t.Helper()
		m, err := create(app, cfg)
		if err != nil {
			t.Fatalf("create %s: %v", app, err)
		}
		return m
	}
	mustCreate("web", svc(port(80, "http"), port(443, "tls", "http")))
	mustCreate("blog", svc(port(80, "http"), port(443, "tls", "http")))
	db := mustCreate("db", svc(port(5432)))
	mustCreate("db", svc(port(5432))) // a second machine of the same app

	_, err := create("cache", svc(port(5432, "proxy_proto")))
	wantStatus(t, err, 409, `port 5432: app "db" already uses port 5432 on the shared edge address, and raw TCP (no handlers) needs a port of its own`)
	_, err = create("cache", svc(port(5432, "http")))
	wantStatus(t, err, 409, `app "db" uses port 5432 for raw TCP`)
	// TLS clients name their app, so a TLS port may share with raw TCP:
	// the raw TCP app gets TLS passthrough for its own names and all
	// other connections.
	mustCreate("cache", svc(port(5432, "tls")))
	mustCreate("vault", svc(port(443)))
	_, err = create("cache", svc(port(443, "proxy_proto")))
	wantStatus(t, err, 409, `app "vault" already uses port 443`)

	// An update is checked the same way.
	_, err = s.c.UpdateMachine(ctx, "db", db.ID, api.CreateMachineRequest{Config: svc(port(80))})
	wantStatus(t, err, 409, `already uses port 80 on the shared edge address`)
}

func TestPortValidation(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	for _, tc := range []struct {
		cfg      api.MachineConfig
		contains string
	}{
		{svc(port(5432, "pg_tls")), `config.services[0].ports[0] (port 5432): handler "pg_tls" is not one the edge has`},
		{svc(port(80, "http", "proxy_proto")), `handlers "http" and "proxy_proto" do not go together`},
		{svc(api.Port{Port: 22, ForceHTTPS: true}), `force_https needs the "http" handler`},
		{svc(api.Port{Port: 443, Handlers: []string{"tls"}, TLSOptions: &api.TLSOptions{Versions: []string{"TLSv1.0"}}}), `"TLSv1.0" is not one the edge serves`},
		{svc(api.Port{Port: 1, ProxyProtoOptions: &api.ProxyProtoOptions{Version: "v3"}}), `proxy_proto_options.version "v3"`},
		{svc(port(80, "http"), port(80, "http")), `port 80 is already used by config.services[0].ports[0]`},
	} {
		_, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: tc.cfg})
		wantStatus(t, err, 400, tc.contains)
	}
}

// UDP ports are apart from TCP's: one app may have TCP 53 and UDP 53 (DNS),
// another app may use TCP 53 next to it only as it could without UDP, a
// UDP port belongs to one app, and a UDP service takes no handlers.
func TestUDPPorts(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, a := range []string{"dns", "other"} {
		s.c.CreateApp(ctx, api.CreateAppRequest{AppName: a})
	}
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192})
	create := func(app string, svcs ...api.Service) error {
		_, err := s.c.CreateMachine(ctx, app, api.CreateMachineRequest{Region: "iad",
			Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 64}, Services: svcs}})
		return err
	}
	udp := func(p int, handlers ...string) api.Service {
		return api.Service{Protocol: "udp", InternalPort: 5353, Ports: []api.Port{port(p, handlers...)}}
	}
	tcp := func(p int, handlers ...string) api.Service {
		return api.Service{Protocol: "tcp", InternalPort: 5353, Ports: []api.Port{port(p, handlers...)}}
	}
	if err := create("dns", udp(53), tcp(53)); err != nil {
		t.Fatalf("TCP and UDP 53 in one app: %v", err)
	}
	wantStatus(t, create("other", udp(53)), 409, `UDP port 53: app "dns" already uses UDP port 53`)
	wantStatus(t, create("other", tcp(53)), 409, `app "dns" already uses port 53`)
	if err := create("other", udp(5353)); err != nil {
		t.Errorf("another UDP port for another app: %v", err)
	}
	wantStatus(t, create("dns", udp(54, "tls")), 400, "a UDP service takes no handlers")
	wantStatus(t, create("dns", udp(55), udp(55)), 400, "UDP port 55 is already used")
	wantStatus(t, create("dns", api.Service{Protocol: "sctp", InternalPort: 1, Ports: []api.Port{port(56)}}), 400, `protocol "sctp" is not one the edge serves`)
}
