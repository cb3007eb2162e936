package devcluster

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// claimMachineNet picks a /16 for the world's machine subnets that
// overlaps no route of this kernel and no other world's claim, so that two
// worlds on one machine (or a world and a real network) never use the same
// addresses, even when started at the same moment, before either has made
// its bridges. The claim is an flock on a file named after the prefix
// under the system's temporary directory, held until release is called
// (or the process ends).
func claimMachineNet() (p netip.Prefix, release func(), err error) {
	dir := filepath.Join(os.TempDir(), "perch-machine-nets")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return netip.Prefix{}, nil, fmt.Errorf("machine net claims: %w", err)
	}
	tried := map[netip.Prefix]bool{}
	for {
		c, err := freeMachineNet(tried)
		if err != nil {
			return netip.Prefix{}, nil, err
		}
		tried[c] = true
		name := strings.NewReplacer(".", "-", "/", "_").Replace(c.String())
		f, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return netip.Prefix{}, nil, fmt.Errorf("claim %s: %w", c, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // another world has it
			continue
		}
		return c, func() { f.Close() }, nil
	}
}

// freeMachineNet picks a /16 that overlaps no route of this kernel and is
// not in skip.
func freeMachineNet(skip map[netip.Prefix]bool) (netip.Prefix, error) {
	routes, err := kernelRoutes()
	if err != nil {
		return netip.Prefix{}, err
	}
	var cands []netip.Prefix
	cands = append(cands, netip.MustParsePrefix("172.30.0.0/16"), netip.MustParsePrefix("172.31.0.0/16"))
	for i := 200; i < 250; i++ {
		cands = append(cands, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	for _, c := range cands {
		free := !skip[c]
		for _, r := range routes {
			if r.Overlaps(c) {
				free = false
				break
			}
		}
		if free {
			return c, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /16 for machine addresses among 172.30-31.0.0 and 10.200-249.0.0; stop other dev worlds")
}

// kernelRoutes lists the destinations of this namespace's IPv4 routes.
func kernelRoutes() ([]netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return nil, fmt.Errorf("read routes (is iproute2 installed?): %w", err)
	}
	var routes []netip.Prefix
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "local" || dst == "broadcast" || dst == "unreachable" {
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil {
			routes = append(routes, p)
		}
	}
	return routes, nil
}
