package drivertest

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/runtime"
)

// addr6AndDNS: a machine with a 6PN address has it on its network card,
// names itself on it in /etc/hosts, reaches its neighbour on the bridge
// by it, and resolves names with the nameservers Net.DNS gives.
func (s *suite) addr6AndDNS(t *testing.T) {
	if s.env.Net6 == nil {
		t.Skip("the driver's test gives no 6PN addresses")
	}
	d := s.newDriver(t)
	a, b := s.spec(t, []string{"serve"}), s.spec(t, []string{"serve"})
	a.Net, b.Net = s.env.Net6(t), s.env.Net6(t)
	a.Net.DNS = []netip.Addr{a.Net.Gateway, netip.MustParseAddr("fdaa::3")}
	for _, spec := range []runtime.Spec{a, b} {
		s.create(t, d, spec)
		s.start(t, d, spec.ID)
	}
	in := info(t, a)
	if !slices.Contains(in.Addrs, a.Net.Addr6.String()) {
		t.Errorf("machine has addresses %v, want %v among them", in.Addrs, a.Net.Addr6)
	}
	for _, addr := range []netip.Addr{a.Net.Addr.Addr(), a.Net.Addr6.Addr()} {
		if !strings.Contains(in.Hosts, addr.String()+"\t"+a.Hostname+"\n") {
			t.Errorf("/etc/hosts does not name the machine on %s:\n%s", addr, in.Hosts)
		}
	}
	if want := "nameserver " + a.Net.Gateway.String() + "\nnameserver fdaa::3\n"; in.Resolv != want {
		t.Errorf("/etc/resolv.conf is\n%s\nwant\n%s", in.Resolv, want)
	}
	info(t, b) // b serves
	target := "http://" + netip.AddrPortFrom(b.Net.Addr6.Addr(), 8080).String() + "/"
	code, body := get(t, a, "GET", "/fetch?url="+url.QueryEscape(target))
	if code != 200 || !strings.Contains(body, "hello from "+b.ID) {
		t.Errorf("machine a fetching %s from b over 6PN: %d %s", target, code, body)
	}
	if bi := info(t, b); bi.Resolv != "" {
		t.Errorf("machine b, with no Net.DNS, has an /etc/resolv.conf:\n%s", bi.Resolv)
	}
}
