package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// MTU leaves room for WireGuard's 80 bytes of IPv6+UDP+WireGuard header
// inside a 1500-byte link.
const MTU = 1420

// MaxMTU is the largest mesh MTU: a WireGuard packet of it and its 80
// bytes of headers fill a UDP datagram.
const MaxMTU = 65535 - 80

// Config is one host's mesh node.
type Config struct {
	Key        Key
	Addr       netip.Addr // this host's mesh address, in Prefix
	ListenPort uint16     // UDP port of WireGuard on every address; 0 picks one
	Region     string

	// OneWay, if set, is the simulated one-way latency from this node's
	// region to a peer's region (see FiberOneWay); packets to endpoints of
	// no known peer are not delayed. Never set it in production.
	OneWay func(from, to string) time.Duration
	// WrapBind, if set, wraps the UDP Bind (outside any delay): tests use
	// it to see the bytes on the wire.
	WrapBind func(conn.Bind) conn.Bind
	// WrapTUN, if set, wraps the node's TUN device (netstack's too), outside
	// ModeTUN's own-address filter: bench/mesh times packets crossing it.
	WrapTUN func(tun.Device) tun.Device

	// TUN, if set, is the name of a kernel TUN device to make for the
	// node (ModeTUN), in the network namespace of the thread that calls
	// New; empty runs TCP/IP in the process (ModeNetstack).
	TUN string

	// MTU is the mesh's packet size, 0 for MTU (1420, for 1500-byte
	// links). A path whose links all carry larger frames (jumbo frames
	// inside a data centre) may take its frame size less 80; every node of
	// a mesh should have the same.
	MTU int

	// RTTInterval is how often each peer is probed; 0 means 2 s.
	RTTInterval time.Duration
	Logger      *slog.Logger // nil: silent
}

// Node is a running WireGuard device with its TCP/IP stack: its own in
// userspace, or the kernel's through a TUN device (Mode).
type Node struct {
	cfg  Config
	log  *slog.Logger
	dev  *device.Device
	net  stack
	link *kernelLink // ModeTUN only
	port uint16

	mu    sync.Mutex // guards peers and regions; never held across IpcSet
	peers map[PublicKey]Peer
	// regions maps a peer's UDP endpoint to its region, for OneWay.
	regions map[netip.AddrPort]string
	setMu   sync.Mutex // serialises SetPeers

	rtt    *rttProber
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New starts a node: WireGuard up on its UDP port, no peers yet, the RTT
// echo listening on its mesh address.
func New(cfg Config) (*Node, error) {
	if cfg.Key.isZero() {
		return nil, errors.New("mesh: config has no key; use LoadOrCreateKey")
	}
	if !cfg.Addr.Is6() || !Prefix.Contains(cfg.Addr) {
		return nil, fmt.Errorf("mesh: address %s is not in %s", cfg.Addr, Prefix)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := &Node{cfg: cfg, log: log, peers: map[PublicKey]Peer{}, regions: map[netip.AddrPort]string{}}

	mtu := cfg.MTU
	if mtu == 0 {
		mtu = MTU
	}
	if mtu < 1280 || mtu > MaxMTU {
		return nil, fmt.Errorf("mesh: MTU %d: want 1280 (IPv6's least) to %d", mtu, MaxMTU)
	}
	var tdev tun.Device
	var err error
	if cfg.TUN != "" {
		ks, err := newKernelStack(cfg.Addr)
		if err != nil {
			return nil, err
		}
		if tdev, n.link, err = openTUN(cfg.TUN, cfg.Addr, mtu); err != nil {
			ks.close()
			return nil, err
		}
		n.link.stack, n.net = ks, ks
	} else {
		d, tnet, err := netstack.CreateNetTUN([]netip.Addr{cfg.Addr}, nil, mtu)
		if err != nil {
			return nil, fmt.Errorf("mesh: netstack: %w", err)
		}
		tdev, n.net = d, userStack{tnet}
	}
	if cfg.WrapTUN != nil {
		tdev = cfg.WrapTUN(tdev)
	}
	var bind conn.Bind = conn.NewDefaultBind()
	if cfg.OneWay != nil {
		bind = NewDelayBind(bind, n.oneWay)
	}
	if cfg.WrapBind != nil {
		bind = cfg.WrapBind(bind)
	}
	n.dev = device.NewDevice(tdev, bind, &device.Logger{
		Verbosef: func(f string, a ...any) { log.Debug(fmt.Sprintf(f, a...)) },
		Errorf:   func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) },
	})
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hexKey(cfg.Key.priv), cfg.ListenPort)
	if err := n.dev.IpcSet(uapi); err != nil {
		n.closeDevice()
		return nil, fmt.Errorf("mesh: configure device: %w", err)
	}
	if err := n.dev.Up(); err != nil {
		n.closeDevice()
		return nil, fmt.Errorf("mesh: device up (UDP port %d taken?): %w", cfg.ListenPort, err)
	}
	if n.port, err = n.listenPort(); err != nil {
		n.closeDevice()
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.rtt, err = startRTT(ctx, n, &n.wg)
	if err != nil {
		cancel()
		n.closeDevice()
		return nil, err
	}
	return n, nil
}

// Mode says where the node's TCP and UDP end.
func (n *Node) Mode() Mode {
	if n.link != nil {
		return ModeTUN
	}
	return ModeNetstack
}

// listenPort asks the device which UDP port it bound, for a ListenPort of 0.
func (n *Node) listenPort() (uint16, error) {
	s, err := n.dev.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("mesh: read device: %w", err)
	}
	for line := range strings.Lines(s) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "listen_port="); ok {
			var p uint16
			if _, err := fmt.Sscan(v, &p); err == nil {
				return p, nil
			}
		}
	}
	return 0, errors.New("mesh: device reports no listen port")
}

// Self is the Peer record others need to reach this node, given the UDP
// address they should send to (this node knows its port, not which of its
// addresses the others can reach).
func (n *Node) Self(host netip.Addr) Peer {
	return Peer{PublicKey: n.cfg.Key.Public(), Endpoint: netip.AddrPortFrom(host, n.port), Addr: n.cfg.Addr, Region: n.cfg.Region}
}

// Addr is the node's mesh address.
func (n *Node) Addr() netip.Addr { return n.cfg.Addr }

// Port is the node's WireGuard UDP port.
func (n *Node) Port() uint16 { return n.port }

// Peers is the current peer set.
func (n *Node) Peers() []Peer {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Peer, 0, len(n.peers))
	for _, p := range n.peers {
		out = append(out, p)
	}
	return out
}

func (n *Node) oneWay(dst netip.AddrPort) time.Duration {
	n.mu.Lock()
	region, ok := n.regions[dst]
	n.mu.Unlock()
	if !ok {
		return 0
	}
	return n.cfg.OneWay(n.cfg.Region, region)
}

// DialContext connects over the mesh: network "tcp", "tcp6", "udp" or
// "udp6", address "[fdaa::…]:port".
func (n *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("mesh: dial %s: want [mesh-ip]:port: %w", address, err)
	}
	switch network {
	case "tcp", "tcp6":
		c, err := n.net.dialTCP(ctx, ap)
		if err != nil {
			return nil, fmt.Errorf("mesh: dial %s: %w", address, err)
		}
		return c, nil
	case "udp", "udp6":
		c, err := n.net.dialUDP(ap)
		if err != nil {
			return nil, fmt.Errorf("mesh: dial %s: %w", address, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("mesh: dial: network %q is not tcp or udp", network)
}

// Listen accepts TCP connections on this node's mesh address at port; 0
// picks a port.
func (n *Node) Listen(port uint16) (net.Listener, error) {
	l, err := n.net.listenTCP(netip.AddrPortFrom(n.cfg.Addr, port))
	if err != nil {
		return nil, fmt.Errorf("mesh: listen on port %d: %w", port, err)
	}
	return l, nil
}

// Close stops the prober and the device.
func (n *Node) Close() error {
	n.cancel()
	n.closeDevice()
	n.wg.Wait()
	return nil
}

// closeDevice closes the WireGuard device and its TUN device.
func (n *Node) closeDevice() {
	n.dev.Close()
	if n.link != nil {
		n.link.close()
	}
}
