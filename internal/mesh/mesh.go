// Package mesh joins hosts into a WireGuard mesh run in userspace
// (wireguard-go, no kernel module), with gVisor's netstack as the node's
// TCP/IP (ModeNetstack: no root, no TUN) or the kernel's through a TUN
// device that holds the node's mesh address (ModeTUN: root, faster).
// Each host has a Key whose private half stays in its state directory; the
// Peer records the others need (public key, UDP endpoint, mesh address,
// region) are what a control plane publishes. A Node dials and listens on
// its mesh address, so TCP between two nodes travels only inside WireGuard,
// and measures the round-trip time to every peer.
//
// For a one-machine world with real geography, DelayBind holds each
// outgoing UDP packet for the one-way fiber time to its destination.
//
// Imports geo only of Perch (docs/mesh.md).
package mesh

import (
	"fmt"
	"net/netip"
)

// Prefix is the private IPv6 range of the mesh, like Fly's 6PN.
var Prefix = netip.MustParsePrefix("fdaa::/16")

// Peer is what a host publishes about itself so others can reach it.
type Peer struct {
	PublicKey PublicKey      `json:"public_key"`
	Endpoint  netip.AddrPort `json:"endpoint"` // UDP address of its WireGuard
	Addr      netip.Addr     `json:"addr"`     // its mesh address (a /128)
	// Subnet, if valid, is routed to the peer too: its machines' /64.
	Subnet netip.Prefix `json:"subnet,omitzero"`
	Region string       `json:"region"`
}

// allowedIPs is what WireGuard routes to the peer (and accepts from it).
func (p Peer) allowedIPs() []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(p.Addr, p.Addr.BitLen())}
	if p.Subnet.IsValid() {
		out = append(out, p.Subnet.Masked())
	}
	return out
}

// Validate says what is wrong with a peer record, if anything.
func (p Peer) Validate() error {
	switch {
	case p.PublicKey == PublicKey{}:
		return fmt.Errorf("peer %s: no public key", p.Addr)
	case !p.Endpoint.IsValid():
		return fmt.Errorf("peer %s: no UDP endpoint", p.PublicKey)
	case !p.Addr.Is6() || !Prefix.Contains(p.Addr):
		return fmt.Errorf("peer %s: mesh address %s is not in %s", p.PublicKey, p.Addr, Prefix)
	}
	return nil
}
