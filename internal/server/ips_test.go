package server

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// The ip_assignments API with pools: an app's first machine with services
// gets a dedicated IPv6 and the shared IPv4; a dedicated IPv4 on request;
// a release of an address in use needs force; bad input is refused by
// name, and the pool's end is said.
func TestIPAssignments(t *testing.T) {
	s := startServer(t, t.TempDir(), func(c *Config) {
		c.Anycast, _ = anycast.ParsePools("192.0.2.0/29", "2001:db8:1::/48")
	})
	ctx := context.Background()
	for _, a := range []string{"web", "worker"} {
		if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: a}); err != nil {
			t.Fatal(err)
		}
	}
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 8, MemoryMB: 8192})
	if _, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: svc(port(80, "http"))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateMachine(ctx, "worker", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 64}}}); err != nil {
		t.Fatal(err)
	}
	ips, err := s.c.ListIPs(ctx, "web")
	if err != nil || len(ips) != 2 || ips[0].IP != "2001:db8:1::1" || ips[0].Shared || ips[1].IP != "192.0.2.1" || !ips[1].Shared {
		t.Fatalf("web's addresses after its first machine: %+v %v", ips, err)
	}
	if ips, err := s.c.ListIPs(ctx, "worker"); err != nil || len(ips) != 0 {
		t.Fatalf("an app without services got addresses: %+v %v", ips, err)
	}
	// A host's heartbeat says what it announces; the list says which
	// regions announce each address.
	h, err := s.c.RegisterHost(ctx, api.Host{Region: "ams", CPUs: 1, MemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Modify(ctx, s.st.Hosts, h.ID, func(h *api.Host) error {
		h.Status = api.HostUp
		h.BGP = &api.HostBGP{Announced: []string{"2001:db8:1::1"}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ips, err := s.c.ListIPs(ctx, "web"); err != nil || !slices.Equal(ips[0].Regions, []string{"ams"}) || len(ips[1].Regions) != 0 {
		t.Fatalf("regions announcing web's addresses: %+v %v", ips, err)
	}
	v4, err := s.c.AssignIP(ctx, "web", "v4")
	if err != nil || v4.IP != "192.0.2.2" || v4.Shared {
		t.Fatalf("dedicated v4: %+v %v", v4, err)
	}
	for range 4 { // .3 - .6: the /29 has five dedicated addresses
		if _, err := s.c.AssignIP(ctx, "worker", "v4"); err != nil {
			t.Fatal(err)
		}
	}
	_, err = s.c.AssignIP(ctx, "worker", "v4")
	wantStatus(t, err, 422, "every address of 192.0.2.0/29 is allocated")
	_, err = s.c.AssignIP(ctx, "web", "v5")
	wantStatus(t, err, 400, `address type "v5" is not one of v4, shared_v4, v6`)
	err = s.c.ReleaseIP(ctx, "web", "198.51.100.7", false)
	wantStatus(t, err, 404, "198.51.100.7 is not in the anycast pools (192.0.2.0/29, 2001:db8:1::/48)")
	err = s.c.ReleaseIP(ctx, "web", "not-an-ip", false)
	wantStatus(t, err, 400, `"not-an-ip" is not an IP address`)
	err = s.c.ReleaseIP(ctx, "web", "192.0.2.3", false)
	wantStatus(t, err, 404, "192.0.2.3 is not an address of app web")
	err = s.c.ReleaseIP(ctx, "web", v4.IP, false)
	wantStatus(t, err, 409, "app web has 1 machine(s) with public services answering on 192.0.2.2; release it with --force")
	if err := s.c.ReleaseIP(ctx, "web", v4.IP, true); err != nil {
		t.Fatalf("forced release: %v", err)
	}
	if err := s.c.ReleaseIP(ctx, "worker", "192.0.2.3", false); err != nil {
		t.Fatalf("release of an app with no services: %v", err)
	}
	ips, _ = s.c.ListIPs(ctx, "web")
	for _, ip := range ips {
		if netip.MustParseAddr(ip.IP) == netip.MustParseAddr(v4.IP) {
			t.Fatalf("released address still listed: %+v", ips)
		}
	}

	// Raw TCP ports collide per address: two apps each with its own
	// address (a dedicated IPv6 from their first machine) may both use
	// port 5432, the edge serving each on its own. Without pools they may
	// not (TestRawTCPPortsAreNotShared).
	for _, a := range []string{"pg1", "pg2"} {
		s.c.CreateApp(ctx, api.CreateAppRequest{AppName: a})
	}
	if _, err := s.c.CreateMachine(ctx, "pg1", api.CreateMachineRequest{Region: "iad", Config: svc(port(5432))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateMachine(ctx, "pg2", api.CreateMachineRequest{Region: "iad", Config: svc(port(5432))}); err != nil {
		t.Fatalf("second app with raw TCP 5432, both with their own IPv6: %v", err)
	}
	// So do UDP ports.
	dns := api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 64},
		Services: []api.Service{{Protocol: "udp", InternalPort: 53, Ports: []api.Port{port(53)}}}}
	if _, err := s.c.CreateMachine(ctx, "pg1", api.CreateMachineRequest{Region: "iad", Config: dns}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateMachine(ctx, "pg2", api.CreateMachineRequest{Region: "iad", Config: dns}); err != nil {
		t.Fatalf("second app with UDP 53, both with their own IPv6: %v", err)
	}

	// Without pools, the API says how to configure them.
	plain := startServer(t, t.TempDir())
	plain.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	_, err = plain.c.AssignIP(ctx, "web", "v6")
	wantStatus(t, err, 412, "start perch server with --anycast-v6 CIDR")
}

// perch regions drain R / undrain R: the region shows draining in the
// regions list and in every app's address list, the record is the one
// the hosts watch (drain.<region> in perch_ips), it is no address, and
// an unknown region is refused by name.
func TestRegionDrain(t *testing.T) {
	s := startServer(t, t.TempDir(), func(c *Config) {
		c.Anycast, _ = anycast.ParsePools("192.0.2.0/29", "")
	})
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.AssignIP(ctx, "web", "v4"); err != nil {
		t.Fatal(err)
	}
	draining := func() []string {
		t.Helper()
		regions, err := s.c.ListRegions(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range regions {
			if r.Draining {
				out = append(out, r.Code)
			}
		}
		return out
	}
	if d, err := s.c.DrainRegion(ctx, "ams"); err != nil || !d.Draining || d.Region != "ams" || d.Since.IsZero() {
		t.Fatalf("drain ams: %+v %v", d, err)
	}
	if _, err := s.c.DrainRegion(ctx, "ams"); err != nil {
		t.Fatalf("drain ams again: %v", err)
	}
	if got := draining(); !slices.Equal(got, []string{"ams"}) {
		t.Fatalf("regions draining after perch regions drain ams: %v", got)
	}
	ips, err := s.c.ListIPs(ctx, "web")
	if err != nil || len(ips) != 1 || !slices.Equal(ips[0].Draining, []string{"ams"}) {
		t.Fatalf("web's addresses with ams drained: %+v %v (want one address, ams draining)", ips, err)
	}
	if _, _, err := store.Get[anycast.RegionDrain](ctx, s.st.IPs, anycast.DrainKey("ams")); err != nil {
		t.Fatalf("the hosts' record of the drain: %v", err)
	}
	_, err = s.c.DrainRegion(ctx, "xyz")
	wantStatus(t, err, 404, `region "xyz" is not a region this Perch knows`)
	if d, err := s.c.UndrainRegion(ctx, "ams"); err != nil || d.Draining {
		t.Fatalf("undrain ams: %+v %v", d, err)
	}
	if got := draining(); len(got) != 0 {
		t.Fatalf("regions draining after perch regions undrain ams: %v", got)
	}
	if ips, err := s.c.ListIPs(ctx, "web"); err != nil || len(ips[0].Draining) != 0 {
		t.Fatalf("web's addresses after the undrain: %+v %v", ips, err)
	}
}
