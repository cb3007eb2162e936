// Package scheduler places machines on hosts: a machine asked for region R
// goes to an up host of R with room for its guest size, and gets a free
// private address from that host's subnet. It sees a read-only view of hosts
// and machines and decides; the control plane writes the result. It imports
// only api and store types, so tests drive it with plain values.
package scheduler

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// ErrUnplaceable is wrapped by every placement failure.
var ErrUnplaceable = errors.New("cannot place machine")

// Default guest size when a machine config leaves it out (shared-cpu-1x).
const (
	DefaultCPUs     = 1
	DefaultMemoryMB = 256
)

// Request is what is to be placed.
type Request struct {
	Region string
	Guest  api.Guest
	// Exclude is a machine id whose current resources are not counted
	// (the machine being updated in place).
	Exclude string
	// Host, when set, is the only host the machine may go to: the host of
	// the volume it mounts.
	Host string
}

// Placement is the scheduler's decision.
type Placement struct {
	HostID    string
	PrivateIP netip.Addr
}

// Place chooses a host and address for req. machines are every live
// (not destroyed) machine spec.
func Place(req Request, hosts []api.Host, machines []store.MachineSpec) (Placement, error) {
	mem := req.Guest.MemoryMB
	if mem == 0 {
		mem = DefaultMemoryMB
	}
	cpus := req.Guest.CPUs
	if cpus == 0 {
		cpus = DefaultCPUs
	}
	var inRegion []api.Host
	for _, h := range hosts {
		if h.Region == req.Region && h.Role != api.HostRoleControl {
			inRegion = append(inRegion, h)
		}
	}
	if len(inRegion) == 0 {
		return Placement{}, fmt.Errorf("%w: no host in region %s; regions with hosts: %s", ErrUnplaceable, req.Region, regionsOf(hosts))
	}
	if req.Host != "" {
		inRegion = slices.DeleteFunc(inRegion, func(h api.Host) bool { return h.ID != req.Host })
		if len(inRegion) == 0 {
			return Placement{}, fmt.Errorf("%w: the machine's volume is on host %s, which is not a host of region %s", ErrUnplaceable, req.Host, req.Region)
		}
	}
	type cand struct {
		h       api.Host
		freeMem int
		count   int
	}
	var cands []cand
	var reasons []string
	for _, h := range inRegion {
		if h.Status != api.HostUp {
			reasons = append(reasons, fmt.Sprintf("host %s is down", h.ID))
			continue
		}
		used, n := 0, 0
		for _, m := range machines {
			if m.HostID != h.ID || m.ID == req.Exclude || m.Desired == store.DesireDestroyed {
				continue
			}
			used += memoryOf(m.Config.Guest)
			n++
		}
		free := h.MemoryMB - used
		switch {
		case cpus > h.CPUs:
			reasons = append(reasons, fmt.Sprintf("host %s has %d CPUs, the machine asks for %d", h.ID, h.CPUs, cpus))
		case mem > free:
			reasons = append(reasons, fmt.Sprintf("host %s has %d MB memory free of %d, the machine asks for %d MB", h.ID, free, h.MemoryMB, mem))
		default:
			cands = append(cands, cand{h, free, n})
		}
	}
	if len(cands) == 0 {
		return Placement{}, fmt.Errorf("%w: no host in region %s has room (%s); ask for less memory or add a host in %s",
			ErrUnplaceable, req.Region, strings.Join(reasons, "; "), req.Region)
	}
	// Spread: most free memory first, then fewest machines, then id.
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.freeMem != b.freeMem {
			return a.freeMem > b.freeMem
		}
		if a.count != b.count {
			return a.count < b.count
		}
		return a.h.ID < b.h.ID
	})
	var lastErr error
	for _, c := range cands {
		ip, err := FreeAddr(c.h, machines, req.Exclude)
		if err != nil {
			lastErr = err
			continue
		}
		return Placement{HostID: c.h.ID, PrivateIP: ip}, nil
	}
	return Placement{}, lastErr
}

func memoryOf(g api.Guest) int {
	if g.MemoryMB == 0 {
		return DefaultMemoryMB
	}
	return g.MemoryMB
}

func regionsOf(hosts []api.Host) string {
	var rs []string
	for _, h := range hosts {
		if h.Role != api.HostRoleControl && !slices.Contains(rs, h.Region) {
			rs = append(rs, h.Region)
		}
	}
	if len(rs) == 0 {
		return "none (start an agent with perch agent --region R)"
	}
	slices.Sort(rs)
	return strings.Join(rs, ", ")
}

// FreeAddr returns the lowest address of h's subnet that is neither the
// gateway (the subnet's first address) nor used by a live machine on h.
func FreeAddr(h api.Host, machines []store.MachineSpec, exclude string) (netip.Addr, error) {
	pfx, err := netip.ParsePrefix(h.Subnet)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: host %s has no valid subnet %q", ErrUnplaceable, h.ID, h.Subnet)
	}
	used := map[netip.Addr]bool{}
	for _, m := range machines {
		if m.HostID == h.ID && m.ID != exclude && m.Desired != store.DesireDestroyed {
			if a, err := netip.ParseAddr(m.PrivateIP); err == nil {
				used[a] = true
			}
		}
	}
	gw := pfx.Masked().Addr().Next()
	for a := gw.Next(); pfx.Contains(a); a = a.Next() {
		if !used[a] && pfx.Contains(a.Next()) { // skip the broadcast address
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: host %s has no free address in %s", ErrUnplaceable, h.ID, h.Subnet)
}

// Gateway is the host bridge's address in subnet: its first host address.
func Gateway(subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits())
}
