package mesh

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

func hexKey(k [32]byte) string { return hex.EncodeToString(k[:]) }

// allowedIPs is what WireGuard routes to p and accepts from it. In ModeTUN
// only p's mesh address: the kernel would forward a packet from or to a
// machine's 6PN address past Forward6PN's checks.
func (n *Node) allowedIPs(p Peer) []netip.Prefix {
	if n.link != nil {
		return []netip.Prefix{netip.PrefixFrom(p.Addr, p.Addr.BitLen())}
	}
	return p.allowedIPs()
}

// SetPeers makes peers the node's whole peer set, live: peers not in it
// are removed, new ones added, changed ones updated. Peers that stay keep
// their WireGuard session (no new handshake), which a blunt replace_peers
// would throw away on every control-plane update.
func (n *Node) SetPeers(peers []Peer) error {
	self := n.cfg.Key.Public()
	want := map[PublicKey]Peer{}
	for _, p := range peers {
		if p.PublicKey == self {
			continue // the control plane's list includes us
		}
		if err := p.Validate(); err != nil {
			return fmt.Errorf("mesh: set peers: %w", err)
		}
		want[p.PublicKey] = p
	}

	n.setMu.Lock()
	defer n.setMu.Unlock()
	n.mu.Lock()
	old := n.peers
	n.mu.Unlock()

	var b strings.Builder
	for k := range old {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
		}
	}
	for k, p := range want {
		if o, ok := old[k]; ok && o == p {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", k.hex(), p.Endpoint)
		for _, ip := range n.allowedIPs(p) {
			fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
		}
	}

	// Regions first, so the first packets to a new peer are already delayed.
	regions := map[netip.AddrPort]string{}
	for _, p := range want {
		regions[p.Endpoint] = p.Region
	}
	n.mu.Lock()
	n.regions = regions
	n.mu.Unlock()

	if b.Len() > 0 {
		if err := n.dev.IpcSet(b.String()); err != nil {
			return fmt.Errorf("mesh: set peers: %w", err)
		}
	}
	if n.link != nil {
		if err := n.link.setRoutes(want); err != nil {
			return fmt.Errorf("mesh: set peers: %w", err)
		}
	}
	n.mu.Lock()
	n.peers = want
	n.mu.Unlock()
	// A new peer is probed at once, to start the handshake, by the smaller
	// key of the pair only; the other side waits for that handshake (or
	// handshakeFallback) before it probes the peer itself (see
	// rttProber.loop). When both sides initiate within half a round trip,
	// each drops the other's answer and WireGuard retries only after 5 s,
	// on both sides at about the same moment: a pair stayed apart for
	// 5–17 s (TestFirstHandshakeOfAPairNeverCollides).
	var kick, wait []PublicKey
	for k := range want {
		if _, ok := old[k]; !ok {
			if bytes.Compare(self[:], k[:]) < 0 {
				kick = append(kick, k)
			} else {
				wait = append(wait, k)
			}
		}
	}
	n.rtt.setPeers(want, kick, wait)
	n.log.Debug("mesh peers set", "peers", len(want))
	return nil
}

// handshakes says which peers have completed a handshake with this node
// (WireGuard's last_handshake_time), as initiator or responder.
func (n *Node) handshakes() map[PublicKey]bool {
	s, err := n.dev.IpcGet()
	if err != nil {
		return nil
	}
	out := map[PublicKey]bool{}
	var cur PublicKey
	for line := range strings.Lines(s) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "public_key":
			cur = PublicKey{}
			if b, err := hex.DecodeString(v); err == nil && len(b) == len(cur) {
				copy(cur[:], b)
			}
		case "last_handshake_time_sec", "last_handshake_time_nsec":
			if v != "0" && cur != (PublicKey{}) {
				out[cur] = true
			}
		}
	}
	return out
}

// resetHandshake removes peer k and adds it again as it was: WireGuard
// forgets an initiation that got no answer and initiates again with the
// next packet, instead of 5 s after the last one. Only for a peer with
// no session (nothing else is lost).
func (n *Node) resetHandshake(k PublicKey) {
	n.setMu.Lock()
	defer n.setMu.Unlock()
	n.mu.Lock()
	p, ok := n.peers[k]
	n.mu.Unlock()
	if !ok {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
	fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", k.hex(), p.Endpoint)
	for _, ip := range n.allowedIPs(p) {
		fmt.Fprintf(&b, "allowed_ip=%s\n", ip)
	}
	if err := n.dev.IpcSet(b.String()); err != nil {
		n.log.Debug("mesh: restart handshake", "peer", k.hex(), "err", err)
	}
}
