package guestinit

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
)

// cmdline is what the init reads from the kernel command line.
type cmdline struct {
	probe    bool   // perch.probe=1: print ProbeOK and power off
	root     string // perch.root: the machine's disk (default /dev/vda)
	rootType string // perch.rootfstype (default ext4)
	ip       ipConfig
	ip6      netip.Prefix // perch.ip6: the 6PN address on ip's device
	dns      []netip.Addr // perch.dns: nameservers, comma-separated
}

// ipConfig is the kernel's ip= parameter, as nfsroot documents it:
// ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>.
// Perch fills client, gateway, netmask and device; the rest is ignored.
type ipConfig struct {
	Addr    netip.Prefix // invalid: no network
	Gateway netip.Addr
	Device  string
}

func parseCmdline() cmdline {
	b, _ := os.ReadFile("/proc/cmdline")
	return parseCmdlineString(string(b))
}

func parseCmdlineString(s string) cmdline {
	c := cmdline{root: "/dev/vda", rootType: "ext4"}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "perch.probe":
			c.probe = v == "1"
		case "perch.root":
			c.root = v
		case "perch.rootfstype":
			c.rootType = v
		case "ip":
			c.ip, _ = parseIP(v)
		case "perch.ip6":
			if p, err := netip.ParsePrefix(v); err == nil && p.Addr().Is6() {
				c.ip6 = p
			}
		case "perch.dns":
			c.dns = nil
			for a := range strings.SplitSeq(v, ",") {
				if addr, err := netip.ParseAddr(a); err == nil {
					c.dns = append(c.dns, addr)
				}
			}
		}
	}
	return c
}

// parseIP reads the ip= parameter; "off", "none" and "dhcp" give no static
// address.
func parseIP(v string) (ipConfig, error) {
	f := strings.Split(v, ":")
	if len(f) < 4 {
		return ipConfig{}, nil
	}
	addr, err := netip.ParseAddr(f[0])
	if err != nil {
		return ipConfig{}, fmt.Errorf("ip=: client address %q: %w", f[0], err)
	}
	mask, err := netip.ParseAddr(f[3])
	if err != nil || !mask.Is4() {
		return ipConfig{}, fmt.Errorf("ip=: netmask %q is not an IPv4 mask", f[3])
	}
	m := mask.As4()
	bits := 0
	for _, b := range m {
		for i := 7; i >= 0 && b&(1<<i) != 0; i-- {
			bits++
		}
	}
	c := ipConfig{Addr: netip.PrefixFrom(addr, bits), Device: "eth0"}
	if gw, err := netip.ParseAddr(f[2]); err == nil {
		c.Gateway = gw
	}
	if len(f) > 5 && f[5] != "" {
		c.Device = f[5]
	}
	return c, nil
}

// IPParam formats the ip= kernel parameter for a static address, the
// host's side of parseIP.
func IPParam(addr netip.Prefix, gateway netip.Addr, hostname, device string) string {
	mask := netip.MustParseAddr("255.255.255.255").As4()
	bits := addr.Bits()
	for i := range mask {
		keep := min(max(bits-8*i, 0), 8)
		mask[i] = byte(0xff << (8 - keep))
	}
	gw := ""
	if gateway.IsValid() {
		gw = gateway.String()
	}
	return fmt.Sprintf("ip=%s::%s:%s:%s:%s:off", addr.Addr(), gw, netip.AddrFrom4(mask), hostname, device)
}

// NetParams formats the kernel parameters for a 6PN address and
// nameservers (none when unset), the host's side of perch.ip6 and
// perch.dns.
func NetParams(addr6 netip.Prefix, dns []netip.Addr) []string {
	var ps []string
	if addr6.IsValid() {
		ps = append(ps, "perch.ip6="+addr6.String())
	}
	if len(dns) > 0 {
		s := make([]string, len(dns))
		for i, a := range dns {
			s[i] = a.String()
		}
		ps = append(ps, "perch.dns="+strings.Join(s, ","))
	}
	return ps
}
