package mesh

import (
	"net/netip"
	"testing"
)

func TestHostAndMachineAddrs(t *testing.T) {
	addr, sub, err := HostAddrs(0x1234)
	if err != nil {
		t.Fatal(err)
	}
	if addr.String() != "fdaa:0:1234::1" || sub.String() != "fdaa:0:1234::/64" {
		t.Fatalf("host 0x1234: addr %s subnet %s", addr, sub)
	}
	if !Prefix.Contains(addr) || !sub.Contains(addr) {
		t.Fatalf("%s must be in %s and %s", addr, Prefix, sub)
	}
	v4 := netip.MustParseAddr("172.30.5.7")
	m := MachineAddr("acme", sub, v4)
	org := OrgPrefix("acme")
	if !org.Contains(m) || HostPrefix.Contains(m) || !MachinePrefix("acme", sub).Contains(m) {
		t.Fatalf("machine addr %s must be in its org's %s and out of the hosts' %s", m, org, HostPrefix)
	}
	if a := m.As16(); a[6] != 0x12 || a[7] != 0x34 || netip.AddrFrom4([4]byte(a[12:])) != v4 {
		t.Fatalf("machine addr %s must carry host 0x1234 and %s", m, v4)
	}
	if other := MachineAddr("globex", sub, v4); other == m || org.Contains(other) {
		t.Fatalf("two organisations' machines share a prefix: %s and %s", m, other)
	}
	if MachineAddr("acme", sub, v4) != m {
		t.Fatal("MachineAddr is not deterministic")
	}
	back, ok := MachineV4(sub, m)
	if !ok || back != v4 {
		t.Fatalf("MachineV4(%s) = %s %v", m, back, ok)
	}
	if _, ok := MachineV4(sub, addr); ok {
		t.Fatalf("the host address %s is not a machine", addr)
	}
	_, other, _ := HostAddrs(2)
	if _, ok := MachineV4(other, m); ok {
		t.Fatalf("%s is not in %s", m, other)
	}
	for _, n := range []int{0, -1, 0x10000} {
		if _, _, err := HostAddrs(n); err == nil {
			t.Fatalf("HostAddrs(%d) must fail", n)
		}
	}
}
