package anycast

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
)

// Flow handoff ("daisy chaining", as Beamer and Cloudflare's Unimog do
// it): when a host stops announcing an address (a SIGTERM, a drained
// region), the routers move its clients to another host mid-connection.
// That host knows none of those connections and would reset them. With
// a Handoff, a host that receives a TCP packet for one of its anycast
// addresses that opens nothing (no SYN) and belongs to no connection it
// tracks (conntrack: new or invalid) sends it, unchanged, to every host
// that is draining; the one that owns the connection answers the client
// directly (from the anycast address, through its own router), the
// others drop it without a word. Packets travel host to host in VXLAN
// (UDP HandoffPort) on the hosts' own addresses: the kernel's VXLAN is
// in every Linux (unlike ipip, GRE or FOU, which some VM kernels leave
// out), and nftables' dup statement sends a copy of the packet to the
// draining host's device address, then the packet is dropped here.

// HandoffDevice is the VXLAN device flows are handed off through.
const HandoffDevice = "perch-handoff"

// HandoffPort is the UDP port of the handoff VXLAN; HandoffVNI its
// network id.
const (
	HandoffPort = 4789
	HandoffVNI  = 4280
)

// handoffTable is the nftables table (in families ip and ip6).
const handoffTable = "perch_handoff"

// gwBase is where each draining host's next-hop address on the device
// comes from: 169.254.42.N (link-local, never on a wire: a permanent
// neighbour entry maps it to the host's device address).
var gwBase = netip.MustParseAddr("169.254.42.0")

// handoffRate bounds the packets a host hands off, per second and
// family (past it they are dropped).
const handoffRate = 20000

// maxHandoffTargets bounds the hosts a flow is handed to at once.
const maxHandoffTargets = 250

// Handoff is a host's side of flow handoff: the VXLAN device and the
// nftables rules, in the current network namespace (or NS).
type Handoff struct {
	// Local is this host's own address, the one other hosts reach it at
	// (its mesh endpoint's address).
	Local netip.Addr
	NS    string // a named network namespace; "" for the current one
	// Port is the VXLAN's UDP port (HandoffPort if 0).
	Port int

	mu      sync.Mutex
	made    bool
	targets []netip.Addr // last applied
}

// HandoffMAC is the device address of the host at addr: derived from
// it, so that no host needs to ask another for it.
func HandoffMAC(addr netip.Addr) net.HardwareAddr {
	h := sha256.Sum256(addr.AsSlice())
	return net.HardwareAddr{0x02, 0x50, h[0], h[1], h[2], h[3]}
}

func (h *Handoff) cmd(name string, stdin []byte, args ...string) error {
	if h.NS != "" {
		args = append([]string{"netns", "exec", h.NS, name}, args...)
		name = "ip"
	}
	c := exec.Command(name, args...)
	if stdin != nil {
		c.Stdin = bytes.NewReader(stdin)
	}
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func (h *Handoff) port() int {
	if h.Port == 0 {
		return HandoffPort
	}
	return h.Port
}

// Ensure makes the device and the tables with no target: from then on
// the kernel tracks this host's connections (conntrack), which is how a
// packet of a connection it does not own is told apart.
func (h *Handoff) Ensure() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ensureLocked()
}

func (h *Handoff) ensureLocked() error {
	if h.made {
		return nil
	}
	if !h.Local.IsValid() {
		return fmt.Errorf("%w: flow handoff needs this host's own address (perch agent --address)", ErrInvalid)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("anycast: flow handoff needs nft (nftables; scripts/deps.sh installs it): %w", err)
	}
	_ = h.cmd("ip", nil, "link", "del", HandoffDevice)
	if err := h.cmd("ip", nil, "link", "add", HandoffDevice, "type", "vxlan", "id", fmt.Sprint(HandoffVNI),
		"dstport", fmt.Sprint(h.port()), "local", h.Local.String(), "nolearning"); err != nil {
		return fmt.Errorf("anycast: handoff device: %w", err)
	}
	if err := h.cmd("ip", nil, "link", "set", HandoffDevice, "address", HandoffMAC(h.Local).String(), "up"); err != nil {
		return fmt.Errorf("anycast: handoff device: %w", err)
	}
	h.made = true
	return h.applyLocked(nil, nil, nil)
}

// Set applies the state: addrs are this host's anycast addresses, hosts
// the addresses of every host that may hand it a flow, targets those
// of the hosts this host hands unknown flows to now (draining ones).
func (h *Handoff) Set(addrs, hosts, targets []netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.ensureLocked(); err != nil {
		return err
	}
	return h.applyLocked(addrs, hosts, targets)
}

// Targets is what the last Set applied.
func (h *Handoff) Targets() []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.targets)
}

func (h *Handoff) applyLocked(addrs, hosts, targets []netip.Addr) error {
	targets = slices.DeleteFunc(slices.Clone(targets), func(a netip.Addr) bool { return a == h.Local || !a.IsValid() })
	slices.SortFunc(targets, netip.Addr.Compare)
	targets = slices.Compact(targets)
	if len(targets) > maxHandoffTargets {
		targets = targets[:maxHandoffTargets]
	}
	// The device's view of each target: a next hop on the device (a
	// route and a permanent neighbour entry: nftables' dup needs both),
	// and the VXLAN's forwarding entry to the host's address.
	var gws []netip.Addr
	_ = h.cmd("ip", nil, "route", "flush", "dev", HandoffDevice)
	_ = h.cmd("ip", nil, "-6", "route", "flush", "dev", HandoffDevice)
	_ = h.cmd("ip", nil, "neigh", "flush", "dev", HandoffDevice, "nud", "permanent")
	_ = h.cmd("bridge", nil, "fdb", "flush", "dev", HandoffDevice)
	for i, t := range targets {
		b := gwBase.As4()
		b[3] = byte(i + 1)
		gw := netip.AddrFrom4(b)
		mac := HandoffMAC(t).String()
		if err := h.cmd("bridge", nil, "fdb", "append", mac, "dev", HandoffDevice, "dst", t.String()); err != nil {
			return fmt.Errorf("anycast: handoff to %s: %w", t, err)
		}
		if err := h.cmd("ip", nil, "route", "replace", gw.String()+"/32", "dev", HandoffDevice); err != nil {
			return fmt.Errorf("anycast: handoff to %s: %w", t, err)
		}
		if err := h.cmd("ip", nil, "neigh", "replace", gw.String(), "lladdr", mac, "dev", HandoffDevice, "nud", "permanent"); err != nil {
			return fmt.Errorf("anycast: handoff to %s: %w", t, err)
		}
		gws = append(gws, gw)
	}
	var b strings.Builder
	for _, fam := range []string{"ip", "ip6"} {
		// Create, then delete and make again: one transaction.
		fmt.Fprintf(&b, "table %s %s {}\ndelete table %s %s\n", fam, handoffTable, fam, handoffTable)
		typ, saddr := "ipv4_addr", "ip"
		if fam == "ip6" {
			typ = "ipv6_addr"
		}
		var mine, from []string
		for _, a := range addrs {
			if (fam == "ip") == a.Unmap().Is4() {
				mine = append(mine, a.Unmap().String())
			}
		}
		for _, a := range hosts {
			if a.Is4() == h.Local.Is4() && a != h.Local {
				from = append(from, a.String())
			}
		}
		if !h.Local.Is4() {
			saddr = "ip6"
		}
		fmt.Fprintf(&b, "table %s %s {\n", fam, handoffTable)
		fmt.Fprintf(&b, "  set addrs { type %s; %s}\n", typ, elements(mine))
		fmt.Fprintf(&b, "  chain pre {\n    type filter hook prerouting priority -150; policy accept;\n")
		// A handed-off packet of a connection this host does not own
		// either: another draining host owns it. Say nothing.
		fmt.Fprintf(&b, "    iifname %q meta l4proto tcp tcp flags & syn == 0 ct state new,invalid drop\n", HandoffDevice)
		fmt.Fprintf(&b, "    iifname %q accept\n", HandoffDevice)
		if len(gws) > 0 {
			fmt.Fprintf(&b, "    %s daddr @addrs meta l4proto tcp tcp flags & syn == 0 ct state new,invalid jump handoff\n", fam)
		}
		b.WriteString("  }\n  chain handoff {\n")
		// Stray packets are few; a flood of forged ones is not copied
		// to every draining host.
		fmt.Fprintf(&b, "    limit rate over %d/second burst %d packets drop\n", handoffRate, handoffRate/10)
		if fam == "ip" {
			for _, gw := range gws {
				fmt.Fprintf(&b, "    dup to %s device %q\n", gw, HandoffDevice)
			}
		} else {
			for _, gw := range gws {
				// The same neighbour, by its IPv4-mapped IPv6 twin.
				fmt.Fprintf(&b, "    dup to %s device %q\n", gw6(gw), HandoffDevice)
			}
		}
		b.WriteString("    drop\n  }\n")
		// The VXLAN takes packets only from hosts of the world.
		if fam == saddr {
			fmt.Fprintf(&b, "  set hosts { type %s; %s}\n", map[string]string{"ip": "ipv4_addr", "ip6": "ipv6_addr"}[fam], elements(from))
			fmt.Fprintf(&b, "  chain in {\n    type filter hook input priority -150; policy accept;\n")
			fmt.Fprintf(&b, "    udp dport %d %s daddr %s %s saddr != @hosts drop\n  }\n", h.port(), fam, h.Local, fam)
		}
		b.WriteString("}\n")
	}
	if len(gws) > 0 {
		for _, gw := range gws {
			g := gw6(gw)
			if err := h.cmd("ip", nil, "-6", "route", "replace", g.String()+"/128", "dev", HandoffDevice); err != nil {
				return fmt.Errorf("anycast: handoff: %w", err)
			}
			mac := HandoffMAC(targets[int(gw.As4()[3])-1]).String()
			if err := h.cmd("ip", nil, "-6", "neigh", "replace", g.String(), "lladdr", mac, "dev", HandoffDevice, "nud", "permanent"); err != nil {
				return fmt.Errorf("anycast: handoff: %w", err)
			}
		}
	}
	if err := h.cmd("nft", []byte(b.String()), "-f", "-"); err != nil {
		return fmt.Errorf("anycast: handoff rules: %w", err)
	}
	h.targets = targets
	return nil
}

// gw6 is a next hop's IPv6 twin on the device (fd00:0:0:42::N, a
// unique local address never on a wire).
func gw6(gw netip.Addr) netip.Addr {
	var b [16]byte
	b[0], b[1], b[7] = 0xfd, 0x00, 0x42
	b[15] = gw.As4()[3]
	return netip.AddrFrom16(b)
}

func elements(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return "elements = { " + strings.Join(s, ", ") + " }; "
}

// Close removes the device and the tables.
func (h *Handoff) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.made {
		return
	}
	h.made = false
	_ = h.cmd("nft", []byte(fmt.Sprintf("table ip %s {}\ndelete table ip %s\ntable ip6 %s {}\ndelete table ip6 %s\n", handoffTable, handoffTable, handoffTable, handoffTable)), "-f", "-")
	_ = h.cmd("ip", nil, "link", "del", HandoffDevice)
}
