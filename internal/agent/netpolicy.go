package agent

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/store"
)

// Network isolation (docs/security.md): the host's nftables rules for its
// bridge follow the machines placed on it. A machine's spec enters the
// rules before its worker sees it, so a machine never runs unknown to
// them (and a port the rules do not know is dropped), and leaves them
// once its worker has destroyed it.

// policyMachine is spec's entry in its host's network policy.
func policyMachine(spec store.MachineSpec, org string, sub6 netip.Prefix) (hostnet.PolicyMachine, bool) {
	ip, err := netip.ParseAddr(spec.PrivateIP)
	if err != nil || !ip.Is4() {
		return hostnet.PolicyMachine{}, false
	}
	m := hostnet.PolicyMachine{ID: spec.ID, IPv4: ip, Org: mesh.OrgPrefix(org)}
	if sub6.IsValid() {
		m.IPv6 = netip.PrefixFrom(mesh.MachineAddr(org, sub6, ip), sub6.Bits())
	}
	return m, true
}

// HostPolicy is the network policy of a host whose bridge is bridge, with
// gateway gw, for its machines (the policy entries of their specs, by
// machine key).
func HostPolicy(bridge string, gw netip.Prefix, machines map[string]hostnet.PolicyMachine, egress bool) hostnet.Policy {
	p := hostnet.Policy{Bridge: bridge, Gateway: gw, DNSPort: DNSPort, Egress: egress}
	for _, m := range machines {
		p.Machines = append(p.Machines, m)
	}
	slices.SortFunc(p.Machines, func(a, b hostnet.PolicyMachine) int { return strings.Compare(a.ID, b.ID) })
	return p
}

// policySet records spec in the host's policy; apply rebuilds the rules
// if the entry changed.
func (a *Agent) policySet(key string, spec store.MachineSpec, apply bool) {
	m, ok := policyMachine(spec, a.orgOf(spec), a.sub6)
	if !ok {
		return
	}
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	if a.policy == nil {
		return
	}
	if old, had := a.policy[key]; had && old == m {
		return
	}
	a.policy[key] = m
	if apply {
		a.applyPolicyLocked()
	}
}

// policyForget removes machine key from the host's policy.
func (a *Agent) policyForget(key string) {
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	if _, ok := a.policy[key]; !ok {
		return
	}
	delete(a.policy, key)
	a.applyPolicyLocked()
}

// applyPolicy rebuilds the rules from the recorded machines.
func (a *Agent) applyPolicy() {
	a.policyMu.Lock()
	defer a.policyMu.Unlock()
	a.applyPolicyLocked()
}

func (a *Agent) applyPolicyLocked() {
	if a.policy == nil {
		return // an agent without a bridge (tests of other parts)
	}
	p := HostPolicy(a.bridge, a.gw, a.policy, a.cfg.MachineEgress)
	if err := hostnet.ApplyPolicy(p); err != nil {
		// The rules already in place stay: a machine they do not know
		// is cut off, not let through.
		a.log.Error("network policy not applied", "bridge", a.bridge, "machines", len(p.Machines), "err", err)
	}
}

// checkNFT fails early when the host cannot enforce network isolation.
func checkNFT() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("agent: nft (nftables) is not installed, and machines would not be isolated from each other and from the host: install the nftables package (scripts/deps.sh does): %w", err)
	}
	return nil
}
