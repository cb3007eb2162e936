package devcluster

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// freeMachineNet picks a /16 for the world's machine subnets that overlaps
// no route of this kernel, so that two worlds on one machine (or a world and
// a real network) never claim the same addresses.
func freeMachineNet() (netip.Prefix, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("read routes (is iproute2 installed?): %w", err)
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
	var cands []netip.Prefix
	cands = append(cands, netip.MustParsePrefix("172.30.0.0/16"), netip.MustParsePrefix("172.31.0.0/16"))
	for i := 200; i < 250; i++ {
		cands = append(cands, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16))
	}
	for _, c := range cands {
		free := true
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
