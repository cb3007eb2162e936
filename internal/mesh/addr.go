package mesh

import (
	"fmt"
	"net/netip"
)

// HostAddrs are the mesh addresses of the n-th host (n ≥ 1) the control
// plane registers: its /64 is fdaa:0:<n>::/64 (n in the third group, up to
// 65535 hosts), the host itself is ::1 in it, and each machine on it has the
// address MachineAddr gives.
func HostAddrs(n int) (addr netip.Addr, subnet netip.Prefix, err error) {
	if n < 1 || n > 0xffff {
		return netip.Addr{}, netip.Prefix{}, fmt.Errorf("mesh: host number %d out of range 1..65535", n)
	}
	var a [16]byte
	a[0], a[1] = 0xfd, 0xaa
	a[4], a[5] = byte(n>>8), byte(n)
	subnet = netip.PrefixFrom(netip.AddrFrom16(a), 64)
	a[15] = 1
	return netip.AddrFrom16(a), subnet, nil
}

// MachineAddr is the private IPv6 address (6PN) of the machine whose IPv4
// address on its host's bridge is v4: the host's /64 with v4 in the low 32
// bits. Deriving one from the other means nothing more to allocate or
// store, and a host can tell from a 6PN address alone which local machine
// it names (MachineV4).
func MachineAddr(subnet netip.Prefix, v4 netip.Addr) netip.Addr {
	a := subnet.Masked().Addr().As16()
	b := v4.As4()
	copy(a[12:], b[:])
	return netip.AddrFrom16(a)
}

// MachineV4 is the inverse of MachineAddr: the IPv4 address of the machine
// with 6PN address addr, if addr is a machine address in subnet.
func MachineV4(subnet netip.Prefix, addr netip.Addr) (netip.Addr, bool) {
	if !addr.Is6() || !subnet.Contains(addr) {
		return netip.Addr{}, false
	}
	a := addr.As16()
	if a[8]|a[9]|a[10]|a[11] != 0 || a[12] == 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{a[12], a[13], a[14], a[15]}), true
}
