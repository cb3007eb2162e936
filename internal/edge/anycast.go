package edge

import (
	"context"
	"net"
	"net/netip"
	"syscall"

	"github.com/perchhq/perch/internal/anycast"
)

// Anycast addresses (docs/anycast.md): an app's dedicated addresses, from
// perch_ips, get their own listener for each of the app's TCP ports, in
// addition to the ports on the edge's own address; the shared anycast
// IPv4 gets the HTTP and TLS ports every app shares (by SNI and Host). On an app's own
// address, only that app is served: a TLS name or Host header of another
// app is refused, and raw TCP goes to the app whatever other apps do
// with the port elsewhere, and so do the app's UDP ports. Port collisions
// are thus per address.

func (t *table) setIP(key string, a anycast.Assignment) { t.mu.Lock(); t.ips[key] = a; t.mu.Unlock() }
func (t *table) removeIP(key string)                    { t.mu.Lock(); delete(t.ips, key); t.mu.Unlock() }

// dedicatedModes gives each dedicated address's ports their mode, from
// the address's app alone; t.mu is held.
func (t *table) dedicatedModes(s *Snapshot, routes map[string]*appRoute) {
	for _, as := range t.ips {
		if !as.IP.IsValid() {
			continue
		}
		if as.Shared() {
			// The shared address serves every app's HTTP and TLS ports,
			// as the edge's own address does; raw TCP needs an app's own.
			for p, m := range s.modes {
				if m.raw == nil {
					s.dedicated[netip.AddrPortFrom(as.IP.Unmap(), uint16(p))] = dedicatedPort{mode: m}
				}
			}
			continue
		}
		ar := routes[as.App]
		if ar == nil {
			continue
		}
		for p, pr := range ar.ports {
			if isUDPKey(p) {
				// A datagram names no app, but the address does: the
				// app's UDP port on its own address is its alone.
				s.dedicatedUDP[netip.AddrPortFrom(as.IP.Unmap(), uint16(udpPortOf(p)))] = as.App + "." + t.domain
				continue
			}
			if pr.chain == nil {
				continue
			}
			m := modeOf(map[string]*portRoute{as.App: pr}, t.domain)
			s.dedicated[netip.AddrPortFrom(as.IP.Unmap(), uint16(p))] = dedicatedPort{app: as.App, mode: m}
		}
	}
}

// dedicatedPort is one port of an app's own address, or (app "") of the
// shared anycast address.
type dedicatedPort struct {
	app  string
	mode *portMode
}

// modeFor is how ps treats a new connection under s.
func (s *Snapshot) modeFor(ps *portServer) *portMode {
	if ps.app != "" {
		d, ok := s.dedicated[ps.addr]
		if !ok || d.app != ps.app {
			return nil
		}
		return d.mode
	}
	return s.modes[ps.port]
}

// listenFree binds addr even before the address is on a local device
// (IP_FREEBIND): the agent puts it there, and the routers send traffic
// only once BGP announces it.
func listenFree(ctx context.Context, addr netip.AddrPort) (net.Listener, error) {
	lc := net.ListenConfig{Control: freebind(addr)}
	return lc.Listen(ctx, "tcp", addr.String())
}

// freebind is the socket option of listenFree.
func freebind(addr netip.AddrPort) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if addr.Addr().Is4() {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_FREEBIND, 1)
			} else {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IPV6, 78 /* IPV6_FREEBIND */, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// listenFreeUDP is listenFree for a UDP port.
func listenFreeUDP(ctx context.Context, addr netip.AddrPort) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: freebind(addr)}
	pc, err := lc.ListenPacket(ctx, "udp", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}
