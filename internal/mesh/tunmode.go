package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// Mode is where a node's TCP and UDP end.
type Mode string

const (
	// ModeNetstack runs TCP/IP in the process (gVisor's netstack): no
	// root, no TUN device, and only the node's own sockets reach the mesh.
	ModeNetstack Mode = "netstack"
	// ModeTUN gives the node's mesh address to a kernel TUN device that
	// wireguard-go drives, with a route to every peer's mesh address:
	// the node's connections are kernel sockets (TCP segmentation and
	// receive offload through the device's virtio-net header). Needs root
	// and /dev/net/tun, and a network namespace of its own per node (a
	// host): two nodes in one namespace would share their routes.
	ModeTUN Mode = "tun"
)

// TUNAvailable says why a TUN-mode node cannot run here, if it cannot.
func TUNAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("mesh: a TUN device needs root")
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("mesh: no TUN device: %w", err)
	}
	f.Close()
	return nil
}

// kernelLink is the TUN device of a ModeTUN node in its network namespace:
// its address and the routes to the peers.
type kernelLink struct {
	h      *netlink.Handle // made in the node's namespace, used from any thread
	link   netlink.Link
	addr   netip.Addr
	routes map[netip.Addr]bool
	stack  kernelStack
}

// openTUN makes the TUN device name in the calling thread's network
// namespace, up, with addr on it and MTU mtu.
func openTUN(name string, addr netip.Addr, mtu int) (tun.Device, *kernelLink, error) {
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("mesh: create TUN device %s: %w", name, err)
	}
	fail := func(err error) (tun.Device, *kernelLink, error) {
		dev.Close()
		return nil, nil, fmt.Errorf("mesh: TUN device %s: %w", name, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fail(err)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		h.Close()
		return fail(err)
	}
	// No duplicate address detection: the address is the node's by the
	// control plane's say, and a tentative one cannot be bound at once.
	a := &netlink.Addr{IPNet: hostNet(addr), Flags: unix.IFA_F_NODAD}
	if err := h.AddrReplace(l, a); err != nil {
		h.Close()
		return fail(fmt.Errorf("add address %s: %w", addr, err))
	}
	if err := h.LinkSetUp(l); err != nil {
		h.Close()
		return fail(err)
	}
	return &ownAddrTUN{Device: dev, addr: addr.As16()}, &kernelLink{h: h, link: l, addr: addr, routes: map[netip.Addr]bool{}}, nil
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// setRoutes routes exactly these peers' mesh addresses through the device.
func (k *kernelLink) setRoutes(peers map[PublicKey]Peer) error {
	want := map[netip.Addr]bool{}
	for _, p := range peers {
		want[p.Addr] = true
	}
	var errs []error
	for a := range k.routes {
		if !want[a] {
			err := k.h.RouteDel(&netlink.Route{LinkIndex: k.link.Attrs().Index, Dst: hostNet(a)})
			if err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("remove route to %s: %w", a, err))
				continue
			}
			delete(k.routes, a)
		}
	}
	for a := range want {
		if k.routes[a] {
			continue
		}
		r := &netlink.Route{LinkIndex: k.link.Attrs().Index, Dst: hostNet(a), Src: k.addr.AsSlice()}
		if err := k.h.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route to %s: %w", a, err))
			continue
		}
		k.routes[a] = true
	}
	return errors.Join(errs...)
}

// close releases the netlink handle; the device, its address and its
// routes go when wireguard-go closes the device.
func (k *kernelLink) close() {
	k.h.Close()
	k.stack.close()
}

// ownAddrTUN passes only the node's own traffic: from its mesh address
// into the mesh, to its mesh address out of it. The kernel would forward
// anything else (to a machine's bridge, say), and machines' 6PN packets
// cross only through Forward6PN's checks.
type ownAddrTUN struct {
	tun.Device
	addr [16]byte
}

func (t *ownAddrTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	for i := range n {
		if !ip6Is(bufs[i][offset:offset+sizes[i]], 8, t.addr) {
			sizes[i] = 0 // wireguard-go skips an empty packet
		}
	}
	return n, err
}

func (t *ownAddrTUN) Write(bufs [][]byte, offset int) (int, error) {
	for i, b := range bufs {
		if ip6Is(b[offset:], 24, t.addr) {
			continue
		}
		// Rare (a peer sending to another address): copy the others.
		kept := make([][]byte, 0, len(bufs))
		kept = append(kept, bufs[:i]...)
		for _, b := range bufs[i+1:] {
			if ip6Is(b[offset:], 24, t.addr) {
				kept = append(kept, b)
			}
		}
		if len(kept) == 0 {
			return 0, nil
		}
		return t.Device.Write(kept, offset)
	}
	return t.Device.Write(bufs, offset)
}

// ip6Is says whether pkt is IPv6 with addr at off (8 the source, 24 the
// destination).
func ip6Is(pkt []byte, off int, addr [16]byte) bool {
	return len(pkt) >= 40 && pkt[0]>>4 == 6 && [16]byte(pkt[off:off+16]) == addr
}
