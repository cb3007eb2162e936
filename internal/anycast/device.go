package anycast

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// DefaultDevice is the dummy device a host puts its anycast addresses on.
const DefaultDevice = "perch-anycast"

// LinkDevice keeps a host's anycast addresses on a dummy device (through
// iproute2), so that its edge can bind them and the kernel answers for
// them; the routers learn to send them here from BGP, not from ARP.
type LinkDevice struct {
	Name string
	NS   string // a named network namespace; "" for the current one

	// added are the addresses SetAddrs put on a device Perch does not own
	// (lo): only those are ever removed from it.
	added map[netip.Prefix]bool
}

func (d *LinkDevice) ip(args ...string) ([]byte, error) {
	if d.NS != "" {
		args = append([]string{"-n", d.NS}, args...)
	}
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Ensure makes the device if it is missing and sets it up. A kernel
// without the dummy driver (some VM kernels) gets the addresses on the
// loopback device instead: Name becomes "lo", which serves the same (the
// kernel answers for them, and nothing announces them but BGP).
func (d *LinkDevice) Ensure() error {
	if _, err := d.ip("link", "show", "dev", d.Name); err != nil {
		out, err := d.ip("link", "add", d.Name, "type", "dummy")
		if err != nil && strings.Contains(string(out)+err.Error(), "Unknown device type") {
			d.Name = "lo"
			return nil
		}
		if err != nil {
			return fmt.Errorf("anycast: device %s: %w", d.Name, err)
		}
	}
	if _, err := d.ip("link", "set", d.Name, "up"); err != nil {
		return fmt.Errorf("anycast: device %s: %w", d.Name, err)
	}
	return nil
}

// SetAddrs makes the device's addresses exactly addrs (each a /32 or
// /128).
func (d *LinkDevice) SetAddrs(addrs []netip.Addr) error {
	out, err := d.ip("-o", "addr", "show", "dev", d.Name)
	if err != nil {
		return fmt.Errorf("anycast: device %s: %w", d.Name, err)
	}
	have := map[netip.Prefix]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "inet" || f[i] == "inet6" {
				if p, err := netip.ParsePrefix(f[i+1]); err == nil && !p.Addr().IsLinkLocalUnicast() {
					have[p] = true
				}
			}
		}
	}
	want := map[netip.Prefix]bool{}
	for _, a := range addrs {
		want[Prefix(a.Unmap())] = true
	}
	if d.added == nil {
		d.added = map[netip.Prefix]bool{}
	}
	for p := range want {
		if !have[p] {
			args := []string{"addr", "add", p.String(), "dev", d.Name}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			if _, err := d.ip(args...); err != nil {
				return fmt.Errorf("anycast: add %s: %w", p, err)
			}
			d.added[p] = true
		}
	}
	for p := range have {
		// On Perch's own dummy device every other address goes; on lo
		// only those Perch added (127.0.0.1 and the operator's stay).
		if !want[p] && (d.Name != "lo" || d.added[p]) {
			delete(d.added, p)
			if _, err := d.ip("addr", "del", p.String(), "dev", d.Name); err != nil {
				return fmt.Errorf("anycast: remove %s: %w", p, err)
			}
		}
	}
	return nil
}
