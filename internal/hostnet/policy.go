package hostnet

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// Policy is what the machines on one host bridge may reach: their own
// organisation's machines (on this bridge by IPv4 and 6PN, elsewhere by
// 6PN), the host's DNS resolver on the gateway, and with Egress the
// outside world through NAT; nothing else of the host or of other
// organisations. ApplyPolicy makes it nftables rules in two tables of
// the bridge's own (PolicyTables), so hosts sharing one kernel (a dev
// world) never touch each other's rules. docs/security.md, "Network
// isolation", says what each rule stops.
type Policy struct {
	Bridge string
	// Gateway is the bridge's IPv4 address with the machines' subnet.
	Gateway netip.Prefix
	// DNSPort is the host resolver's port on Gateway (53).
	DNSPort  int
	Machines []PolicyMachine
	// Egress lets machines reach addresses outside the private ranges,
	// masqueraded behind the host's. Off unless the operator turns it on.
	Egress bool
}

// PolicyMachine is one machine of a Policy.
type PolicyMachine struct {
	ID   string
	IPv4 netip.Addr
	// IPv6 is its 6PN address with the on-link prefix length (runtime.Net's
	// Addr6); the zero value for none.
	IPv6 netip.Prefix
	// Org is its organisation's 6PN prefix (mesh.OrgPrefix): machines with
	// one Org reach each other, on this host by IPv4 too.
	Org netip.Prefix
}

// Range6 is the private IPv6 range machines route through their gateway
// (the bridge's fe80::1): every 6PN address, of this host or another.
var Range6 = netip.MustParsePrefix("fdaa::/16")

// gateway6 is the bridge's link-local address machines route Range6 to.
var gateway6 = netip.MustParsePrefix("fe80::1/64")

// Route6MTU is the MTU of machines' route for Range6: what the mesh
// carries whole between hosts (mesh.SixPNMTU), so that their TCP picks
// segments that fit.
const Route6MTU = 1372

// privateRanges are never reached through Egress: the host's and other
// hosts' own networks, link-local (cloud metadata at 169.254.169.254) and
// the shared CGNAT range.
var privateRanges = []string{
	"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
	"172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/3",
}

const tablePrefix = "perch_"

// PolicyTable is the name of bridge's nftables tables (one in the bridge
// family, one in inet).
func PolicyTable(bridge string) string {
	return tablePrefix + strings.NewReplacer("-", "_", ".", "_").Replace(bridge)
}

// ApplyPolicy replaces bridge p.Bridge's rules with p's in one nftables
// transaction (a machine never sees a moment without rules), and makes the
// kernel route each organisation's on-link 6PN /64 to the bridge.
func ApplyPolicy(p Policy) error {
	if err := checkLink(p.Bridge); err != nil {
		return err
	}
	if !p.Gateway.IsValid() || !p.Gateway.Addr().Is4() {
		return fmt.Errorf("hostnet: policy of %s: gateway %v must be an IPv4 address with a prefix length", p.Bridge, p.Gateway)
	}
	for _, m := range p.Machines {
		if err := CheckID(m.ID); err != nil {
			return err
		}
		if !m.IPv4.Is4() || !p.Gateway.Contains(m.IPv4) {
			return fmt.Errorf("hostnet: policy of %s: machine %s has address %v, not one of the bridge's %v", p.Bridge, m.ID, m.IPv4, p.Gateway.Masked())
		}
		if err := checkAddr6(m.IPv6); err != nil {
			return fmt.Errorf("hostnet: policy of %s: machine %s: %w", p.Bridge, m.ID, err)
		}
	}
	if err := nft(policyRules(p)); err != nil {
		return fmt.Errorf("hostnet: policy of %s: %w", p.Bridge, err)
	}
	if err := syncRoutes6(p); err != nil {
		return fmt.Errorf("hostnet: policy of %s: %w", p.Bridge, err)
	}
	return nil
}

// RemovePolicy deletes bridge's tables; missing ones are not an error.
func RemovePolicy(bridge string) error {
	if err := checkLink(bridge); err != nil {
		return err
	}
	t := PolicyTable(bridge)
	// Creating before deleting makes the deletion of a missing table a
	// no-op, in one transaction.
	script := fmt.Sprintf("table bridge %[1]s\ndelete table bridge %[1]s\ntable inet %[1]s\ndelete table inet %[1]s\n", t)
	if err := nft(script); err != nil {
		return fmt.Errorf("hostnet: remove policy of %s: %w", bridge, err)
	}
	return nil
}

// PolicyTables lists Perch's nftables tables in the kernel ("bridge
// perch_pb_1a2b3c4d", "inet ..."): none should outlive their bridge.
func PolicyTables() ([]string, error) {
	out, err := exec.Command("nft", "-j", "list", "tables").Output()
	if err != nil {
		return nil, fmt.Errorf("hostnet: nft list tables: %w", err)
	}
	var doc struct {
		Nftables []struct {
			Table *struct {
				Family string `json:"family"`
				Name   string `json:"name"`
			} `json:"table"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("hostnet: parse nft list tables: %w", err)
	}
	var tables []string
	for _, e := range doc.Nftables {
		if e.Table != nil && strings.HasPrefix(e.Table.Name, tablePrefix) {
			tables = append(tables, e.Table.Family+" "+e.Table.Name)
		}
	}
	return tables, nil
}

// nft runs an nftables script as one transaction.
func nft(script string) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft (nftables) is not installed: install the nftables package (scripts/deps.sh does): %w", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin, cmd.Stderr = strings.NewReader(script), &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %s: %w", strings.TrimSpace(stderr.String()), err)
	}
	return nil
}

// PortGroup is the interface group of bridge's machine ports (veths and
// taps): how its rules tell frames of its ports from other bridges' in a
// kernel several hosts share, since kernels without nft_meta_bridge
// cannot match on the bridge's name.
func PortGroup(bridge string) uint32 {
	h := sha256.Sum256([]byte(bridge))
	return 0x50000000 | binary.BigEndian.Uint32(h[:4])&0x0fffffff
}

// ports are the names machine id's link on the bridge may have: its veth
// (runc) or its tap (microVM).
func ports(id string) string { return fmt.Sprintf("{ %q, %q }", VethName(id), TapName(id)) }

// orgGroups are p's machines by organisation, in a stable order.
func orgGroups(p Policy) (orgs []netip.Prefix, by map[netip.Prefix][]PolicyMachine) {
	by = map[netip.Prefix][]PolicyMachine{}
	for _, m := range p.Machines {
		if !m.Org.IsValid() {
			continue // an organisation of its own: reaches no other machine
		}
		if _, ok := by[m.Org]; !ok {
			orgs = append(orgs, m.Org)
		}
		by[m.Org] = append(by[m.Org], m)
	}
	slices.SortFunc(orgs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return orgs, by
}

// v4Set is the machines' IPv4 addresses as an nftables set.
func v4Set(ms []PolicyMachine) string {
	v4 := make([]string, len(ms))
	for i, m := range ms {
		v4[i] = m.IPv4.String()
	}
	return "{ " + strings.Join(v4, ", ") + " }"
}

// policyRules is p as an nftables script that replaces the bridge's tables.
func policyRules(p Policy) string {
	t := PolicyTable(p.Bridge)
	br := fmt.Sprintf("%q", p.Bridge)
	group := PortGroup(p.Bridge)
	orgs, by := orgGroups(p)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	// Layer 2: what crosses the bridge between two machines, and what a
	// machine's port may send at all.
	w("table bridge %s", t)
	w("delete table bridge %s", t)
	w("table bridge %s {", t)
	w("  chain prerouting {")
	w("    type filter hook prerouting priority -200; policy accept;")
	w("    meta iifgroup != %d accept", group)
	for _, m := range p.Machines {
		// A machine sends only from its own addresses: the rules below
		// may trust a source address.
		src6 := "fe80::/10, ::"
		if m.IPv6.IsValid() {
			src6 = m.IPv6.Addr().String() + ", " + src6
		}
		w("    iifname %s arp saddr ip != %s drop", ports(m.ID), m.IPv4)
		w("    iifname %s ip saddr != %s drop", ports(m.ID), m.IPv4)
		w("    iifname %s ip6 saddr != { %s } drop", ports(m.ID), src6)
		w("    iifname %s ether type { arp, ip, ip6 } accept", ports(m.ID))
	}
	w("    drop") // ports of no machine of the policy, other protocols
	w("  }")
	w("  chain forward {")
	w("    type filter hook forward priority -200; policy accept;")
	w("    meta iifgroup != %d meta oifgroup != %d accept", group, group)
	w("    ether type arp accept")
	w("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept")
	for _, org := range orgs {
		w("    ip saddr %s ip daddr %s accept", v4Set(by[org]), v4Set(by[org]))
		w("    ip6 saddr %s ip6 daddr %s accept", org, org)
	}
	w("    drop")
	w("  }")
	w("}")

	// Layer 3: what machines send to the host itself (input) and what the
	// host routes to or from them (forward: 6PN between bridges and hosts,
	// egress).
	w("table inet %s", t)
	w("delete table inet %s", t)
	w("table inet %s {", t)
	w("  chain input {")
	w("    type filter hook input priority filter; policy accept;")
	w("    iifname != %s accept", br)
	w("    ct state established,related accept") // answers to the host's own connections (the edge, checks)
	if p.DNSPort > 0 {
		w("    ip daddr %s meta l4proto { tcp, udp } th dport %d accept", p.Gateway.Addr(), p.DNSPort)
	}
	w("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept")
	w("    drop")
	w("  }")
	w("  chain forward {")
	w("    type filter hook forward priority filter; policy accept;")
	w("    iifname != %s oifname != %s accept", br, br)
	// Where br_netfilter hands bridged frames to this hook too, traffic
	// between two machines of the bridge is here as well.
	w("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } iifname %s oifname %s accept", br, br)
	for _, org := range orgs {
		w("    ip saddr %s ip daddr %s accept", v4Set(by[org]), v4Set(by[org]))
		w("    ip6 saddr %s ip6 daddr %s accept", org, org)
	}
	w("    oifname %s ct state established,related accept", br)
	if p.Egress {
		w("    iifname %s ct state established,related accept", br)
		w("    iifname %s oifname != %s ip daddr != { %s } accept", br, br, strings.Join(privateRanges, ", "))
	}
	w("    drop")
	w("  }")
	if p.Egress {
		w("  chain postrouting {")
		w("    type nat hook postrouting priority srcnat; policy accept;")
		w("    ip saddr %s oifname != %s masquerade", p.Gateway.Masked(), br)
		w("  }")
	}
	w("}")
	return b.String()
}

// syncRoutes6 routes each organisation's 6PN /64 of p's machines to the
// bridge and removes the bridge's other 6PN routes, gives the bridge the
// machines' IPv6 gateway address, and lets the kernel forward IPv6 that
// arrives on the bridge (between organisations the rules above drop it).
func syncRoutes6(p Policy) error {
	want := map[netip.Prefix]bool{}
	for _, m := range p.Machines {
		if m.IPv6.IsValid() {
			want[m.IPv6.Masked()] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	if _, err := ip("-6", "addr", "replace", gateway6.String(), "dev", p.Bridge, "nodad"); err != nil {
		return fmt.Errorf("bridge IPv6 gateway: %w", err)
	}
	if err := EnableForwarding6(p.Bridge); err != nil {
		return err
	}
	out, err := ip("-j", "-6", "route", "show", "dev", p.Bridge)
	if err != nil {
		return err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return fmt.Errorf("parse ip route output: %w", err)
	}
	for _, r := range routes {
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil || !Range6.Overlaps(dst) {
			continue
		}
		if want[dst] {
			delete(want, dst)
			continue
		}
		if _, err := ip("-6", "route", "del", dst.String(), "dev", p.Bridge); err != nil && !errors.Is(err, errNotExist) {
			return err
		}
	}
	for dst := range want {
		if _, err := ip("-6", "route", "replace", dst.String(), "dev", p.Bridge); err != nil {
			return err
		}
	}
	return nil
}

// EnableForwarding6 lets the kernel forward IPv6 packets that arrive on
// dev: only on dev where the kernel can (force_forwarding, Linux 6.17),
// else on every interface, as IPv4 forwarding already is.
func EnableForwarding6(dev string) error {
	if err := checkLink(dev); err != nil {
		return err
	}
	for _, f := range []string{"/proc/sys/net/ipv6/conf/" + dev + "/force_forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		cur, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil && bytes.Equal(bytes.TrimSpace(cur), []byte("1")) {
			return nil
		}
		if err := os.WriteFile(f, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable IPv6 forwarding: %w", err)
		}
		return nil
	}
	return fmt.Errorf("enable IPv6 forwarding: the kernel has no IPv6 forwarding switch (is IPv6 off?)")
}

// SetupSixPN readies dev, a TUN device the caller made, as bridge's way
// to other hosts' 6PN: up with MTU mtu, and IPv6 routed from the bridge
// to Range6 through it, in a routing table of the bridge's own (a rule
// for packets arriving on the bridge) so that hosts sharing a kernel (a
// dev world) each use their own device. Packets it hands in are routed
// to the bridges by the main table's on-link routes (ApplyPolicy).
func SetupSixPN(dev, bridge string, mtu int) error {
	if err := checkLink(dev); err != nil {
		return err
	}
	if err := checkLink(bridge); err != nil {
		return err
	}
	table := fmt.Sprint(PortGroup(bridge))
	if _, err := ip("link", "set", "dev", dev, "mtu", fmt.Sprint(mtu), "up"); err != nil {
		return fmt.Errorf("hostnet: 6PN device %s: %w", dev, err)
	}
	if _, err := ip("-6", "route", "replace", Range6.String(), "dev", dev, "table", table); err != nil {
		return fmt.Errorf("hostnet: 6PN device %s: %w", dev, err)
	}
	if err := deleteSixPNRules(bridge); err != nil {
		return fmt.Errorf("hostnet: 6PN device %s: %w", dev, err)
	}
	if _, err := ip("-6", "rule", "add", "iif", bridge, "lookup", table, "priority", sixpnRulePriority); err != nil {
		return fmt.Errorf("hostnet: 6PN device %s: %w", dev, err)
	}
	if err := EnableForwarding6(dev); err != nil {
		return fmt.Errorf("hostnet: 6PN device %s: %w", dev, err)
	}
	return nil
}

// sixpnRulePriority puts the bridges' 6PN rules before the main table.
const sixpnRulePriority = "1000"

// RemoveSixPN removes what SetupSixPN made for bridge that outlives the
// TUN device: its routing rule. Missing, it is no error.
func RemoveSixPN(bridge string) error {
	if err := checkLink(bridge); err != nil {
		return err
	}
	if err := deleteSixPNRules(bridge); err != nil {
		return fmt.Errorf("hostnet: remove 6PN rule of %s: %w", bridge, err)
	}
	return nil
}

// deleteSixPNRules deletes every rule SetupSixPN made for bridge.
func deleteSixPNRules(bridge string) error {
	table := fmt.Sprint(PortGroup(bridge))
	for range 100 {
		out, err := ip("-6", "rule", "show", "iif", bridge, "lookup", table)
		if err != nil {
			return err
		}
		if len(bytes.TrimSpace(out)) == 0 {
			return nil
		}
		if _, err := ip("-6", "rule", "del", "iif", bridge, "lookup", table); err != nil {
			return err
		}
	}
	return fmt.Errorf("rules for %s keep coming back", bridge)
}
