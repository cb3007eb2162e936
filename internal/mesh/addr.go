package mesh

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// HostAddrs are the mesh addresses of the n-th host (n ≥ 1) the control
// plane registers: the host itself is fdaa:0:<n>::1 (n in the third
// group, up to 65535 hosts), and subnet, fdaa:0:<n>::/64, names the host:
// its number is what MachineAddr puts in the addresses of its machines.
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

// HostPrefix is the part of fdaa::/16 that holds the hosts' own mesh
// addresses (fdaa:0:<n>::1): no organisation's 6PN is in it.
var HostPrefix = netip.MustParsePrefix("fdaa::/32")

// OrgNet is organisation org's 6PN network number: the first 32 bits of
// the SHA-256 of its slug, the high 16 never 0 so that no organisation's
// prefix is inside HostPrefix. Derived, never stored, like the machine
// addresses made from it: every host and edge computes the same one.
func OrgNet(org string) uint32 {
	sum := sha256.Sum256([]byte("perch-6pn:" + org))
	n := binary.BigEndian.Uint32(sum[:4])
	if n>>16 == 0 {
		n |= 0x8000 << 16
	}
	return n
}

// OrgPrefix is organisation org's 6PN prefix, fdaa:<net>::/48 (net is
// OrgNet, 32 bits), as Fly gives each organisation its own: every address
// of the organisation's machines, on every host, is in it and no other
// organisation's is.
func OrgPrefix(org string) netip.Prefix {
	var a [16]byte
	a[0], a[1] = 0xfd, 0xaa
	binary.BigEndian.PutUint32(a[2:6], OrgNet(org))
	return netip.PrefixFrom(netip.AddrFrom16(a), 48)
}

// hostNumber is the host number in a host subnet HostAddrs gave.
func hostNumber(host netip.Prefix) [2]byte {
	a := host.Addr().As16()
	return [2]byte{a[4], a[5]}
}

// MachinePrefix is the /64 of organisation org's machines on the host
// whose subnet (HostAddrs) is host: fdaa:<org net>:<host n>::/64. It is
// on-link on the host's bridge for the organisation's machines.
func MachinePrefix(org string, host netip.Prefix) netip.Prefix {
	a := OrgPrefix(org).Addr().As16()
	n := hostNumber(host)
	a[6], a[7] = n[0], n[1]
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// MachineAddr is the private IPv6 address (6PN) of organisation org's
// machine whose IPv4 address on its host's bridge is v4, host being the
// host's subnet: fdaa:<org net, 32 bits>:<host n>::<v4>. Deriving it
// means nothing more to allocate or store; the address alone tells its
// organisation (OrgPrefix) and a host which local machine it names
// (MachineV4).
func MachineAddr(org string, host netip.Prefix, v4 netip.Addr) netip.Addr {
	a := MachinePrefix(org, host).Addr().As16()
	b := v4.As4()
	copy(a[12:], b[:])
	return netip.AddrFrom16(a)
}

// MachineV4 is the inverse of MachineAddr: the IPv4 address of the machine
// with 6PN address addr, if addr is a machine address (of any
// organisation) on the host whose subnet is host.
func MachineV4(host netip.Prefix, addr netip.Addr) (netip.Addr, bool) {
	if !addr.Is6() || !Prefix.Contains(addr) || HostPrefix.Contains(addr) {
		return netip.Addr{}, false
	}
	a := addr.As16()
	if n := hostNumber(host); a[6] != n[0] || a[7] != n[1] {
		return netip.Addr{}, false
	}
	if a[8]|a[9]|a[10]|a[11] != 0 || a[12] == 0 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{a[12], a[13], a[14], a[15]}), true
}
