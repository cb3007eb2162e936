package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// SixPNPort is the mesh UDP port on which hosts hand each other their
// machines' 6PN packets.
const SixPNPort = 6

// SixPNMTU is the largest machine packet the mesh carries whole: MTU less
// the IPv6 and UDP headers it travels in inside WireGuard.
const SixPNMTU = MTU - 40 - 8

// tunOffset is the room before each packet wireguard-go's TUN devices want
// (a virtio-net header on Linux).
const tunOffset = 16

// Forward6PN carries machines' 6PN packets between dev, a kernel TUN
// device the host routes other hosts' 6PN to, and the other hosts, until
// ctx is done; then it closes dev. Each packet crosses as one UDP datagram
// to port SixPNPort of the destination host's mesh address, so inside
// WireGuard. host is this host's subnet (HostAddrs). It sends only packets
// from a machine address of this host, and takes in only packets from a
// machine of the host that sent them (whose mesh address WireGuard
// vouches for) to a machine of this one; which organisations may talk is
// the host's firewall's business (hostnet.ApplyPolicy).
func (n *Node) Forward6PN(ctx context.Context, dev tun.Device, host netip.Prefix, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pc, err := n.net.listenUDP(netip.AddrPortFrom(n.cfg.Addr, SixPNPort))
	if err != nil {
		dev.Close()
		return fmt.Errorf("mesh: 6PN: listen: %w", err)
	}
	var once sync.Once
	stop := func() { once.Do(func() { pc.Close(); dev.Close() }) }
	defer stop()
	go func() { <-ctx.Done(); stop() }()

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		defer stop()
		buf := make([]byte, tunOffset+65535)
		for {
			k, from, err := pc.ReadFrom(buf[tunOffset:])
			if err != nil {
				return
			}
			ua, _ := from.(*net.UDPAddr)
			if ua == nil || !inbound6PN(host, ua.AddrPort().Addr().Unmap(), buf[tunOffset:tunOffset+k]) {
				continue
			}
			if _, err := dev.Write([][]byte{buf[:tunOffset+k]}, tunOffset); err != nil {
				log.Debug("6PN: write to the TUN device", "err", err)
			}
		}
	})
	batch := dev.BatchSize()
	bufs, sizes := make([][]byte, batch), make([]int, batch)
	for i := range bufs {
		bufs[i] = make([]byte, tunOffset+65535)
	}
	for {
		k, err := dev.Read(bufs, sizes, tunOffset)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if errors.Is(err, tun.ErrTooManySegments) {
				continue
			}
			return fmt.Errorf("mesh: 6PN: read the TUN device: %w", err)
		}
		for i := range k {
			pkt := bufs[i][tunOffset : tunOffset+sizes[i]]
			to, ok := outbound6PN(host, pkt)
			if !ok {
				continue
			}
			if _, err := pc.WriteTo(pkt, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, SixPNPort))); err != nil {
				log.Debug("6PN: send", "to", to, "err", err)
			}
		}
	}
}

// addrs6 are an IPv6 packet's source and destination, if pkt is one.
func addrs6(pkt []byte) (src, dst netip.Addr, ok bool) {
	if len(pkt) < 40 || pkt[0]>>4 != 6 {
		return src, dst, false
	}
	return netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), true
}

// machineHost is the mesh address of the host of 6PN machine address a.
func machineHost(a netip.Addr) (addr netip.Addr, subnet netip.Prefix, ok bool) {
	if !Prefix.Contains(a) || HostPrefix.Contains(a) {
		return addr, subnet, false
	}
	b := a.As16()
	addr, subnet, err := HostAddrs(int(b[6])<<8 | int(b[7]))
	return addr, subnet, err == nil
}

// outbound6PN is the mesh address of the host pkt goes to, if this host
// (subnet host) may send it: from one of its machines to another host's.
func outbound6PN(host netip.Prefix, pkt []byte) (netip.Addr, bool) {
	src, dst, ok := addrs6(pkt)
	if !ok {
		return netip.Addr{}, false
	}
	if _, ok := MachineV4(host, src); !ok {
		return netip.Addr{}, false
	}
	to, sub, ok := machineHost(dst)
	if !ok || sub == host.Masked() {
		return netip.Addr{}, false
	}
	if _, ok := MachineV4(sub, dst); !ok {
		return netip.Addr{}, false
	}
	return to, true
}

// inbound6PN reports whether this host (subnet host) takes pkt from the
// host with mesh address from: from one of that host's machines to one of
// its own.
func inbound6PN(host netip.Prefix, from netip.Addr, pkt []byte) bool {
	src, dst, ok := addrs6(pkt)
	if !ok {
		return false
	}
	sender, _, ok := machineHost(src)
	if !ok || sender != from {
		return false
	}
	_, ok = MachineV4(host, dst)
	return ok
}
