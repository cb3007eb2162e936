package mesh

import (
	"net/netip"
	"testing"
)

// packet6 is an IPv6 header from src to dst (no payload).
func packet6(src, dst netip.Addr) []byte {
	p := make([]byte, 40)
	p[0] = 6 << 4
	s, d := src.As16(), dst.As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	return p
}

// A host hands the mesh only its own machines' packets for another
// host's machines, and takes in only the sending host's machines' packets
// for its own.
func TestSixPNChecks(t *testing.T) {
	a, subA, _ := HostAddrs(1)
	b, subB, _ := HostAddrs(2)
	v4 := netip.MustParseAddr("172.30.1.2")
	onA := MachineAddr("acme", subA, v4)
	onB := MachineAddr("acme", subB, netip.MustParseAddr("172.30.2.2"))
	otherOrgOnB := MachineAddr("globex", subB, netip.MustParseAddr("172.30.2.3"))

	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		want     bool
	}{
		{"own machine to a machine of B", onA, onB, true},
		{"own machine to another org on B (the rules decide)", onA, otherOrgOnB, true},
		{"a source that is not this host's machine", onB, onA, false},
		{"to B's own mesh address", onA, b, false},
		{"to a machine of this host", onA, MachineAddr("acme", subA, netip.MustParseAddr("172.30.1.3")), false},
		{"from this host's mesh address", a, onB, false},
		{"outside the mesh", onA, netip.MustParseAddr("2001:db8::1"), false},
	} {
		to, ok := outbound6PN(subA, packet6(tc.src, tc.dst))
		if ok != tc.want || (ok && to != b) {
			t.Errorf("outbound %s: got %v %v, want %v to %v", tc.name, to, ok, tc.want, b)
		}
	}
	if _, ok := outbound6PN(subA, []byte{0x45, 0, 0, 20}); ok {
		t.Error("an IPv4 packet went out")
	}

	for _, tc := range []struct {
		name     string
		from     netip.Addr
		src, dst netip.Addr
		want     bool
	}{
		{"B's machine to ours, sent by B", b, onB, onA, true},
		{"B's machine, sent by another host", netip.MustParseAddr("fdaa:0:3::1"), onB, onA, false},
		{"a source of host A, sent by B", b, onA, onA, false},
		{"to a machine of B, sent to A", b, onB, otherOrgOnB, false},
		{"to A's mesh address", b, onB, a, false},
	} {
		if got := inbound6PN(subA, tc.from, packet6(tc.src, tc.dst)); got != tc.want {
			t.Errorf("inbound %s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
