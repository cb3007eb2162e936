package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"

	"golang.zx2c4.com/wireguard/tun/netstack"
)

// stack is where a node's own TCP and UDP end: gVisor's netstack inside
// the process (ModeNetstack), or the kernel's, through the TUN device that
// carries the node's mesh address (ModeTUN).
type stack interface {
	dialTCP(ctx context.Context, to netip.AddrPort) (net.Conn, error)
	dialUDP(to netip.AddrPort) (net.Conn, error)
	listenTCP(at netip.AddrPort) (net.Listener, error)
	listenUDP(at netip.AddrPort) (net.PacketConn, error)
}

// userStack is netstack's.
type userStack struct{ n *netstack.Net }

func (s userStack) dialTCP(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	return s.n.DialContextTCPAddrPort(ctx, to)
}

func (s userStack) dialUDP(to netip.AddrPort) (net.Conn, error) {
	return s.n.DialUDPAddrPort(netip.AddrPort{}, to)
}

func (s userStack) listenTCP(at netip.AddrPort) (net.Listener, error) {
	return s.n.ListenTCPAddrPort(at)
}

func (s userStack) listenUDP(at netip.AddrPort) (net.PacketConn, error) {
	return s.n.ListenUDPAddrPort(at)
}

// kernelStack is the kernel's: sockets bound to the node's mesh address,
// so what they send leaves through the node's TUN device, and made in the
// network namespace the device is in, whichever thread asks (a process
// running hosts in several namespaces, as tests and bench/mesh do).
type kernelStack struct {
	addr netip.Addr
	ns   *netnsFile // the device's namespace, if not the process's; else nil
}

// netnsFile is a namespace's file, closed once no socket is being made
// in it (a dial may still be under way when the node closes).
type netnsFile struct {
	mu sync.RWMutex
	f  *os.File // nil once closed
}

// enter moves the calling (locked) thread into the namespace.
func (n *netnsFile) enter() error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.f == nil {
		return errors.New("mesh: the node is closed")
	}
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("mesh: enter the TUN device's network namespace: %w", err)
	}
	return nil
}

// processNS is the network namespace the process started in, read at
// init (on the main thread, before any goroutine could move one): not
// /proc/self/ns/net later, which is the main thread's, and a goroutine
// locked to the main thread may have entered another namespace.
var processNS, processNSErr = netnsID()

func netnsID() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat("/proc/thread-self/ns/net", &st)
	return st, err
}

// newKernelStack is the calling thread's namespace's stack.
func newKernelStack(addr netip.Addr) (kernelStack, error) {
	s := kernelStack{addr: addr}
	mine, err := netnsID()
	if err != nil {
		return s, fmt.Errorf("mesh: network namespace: %w", err)
	}
	if processNSErr == nil && mine.Ino == processNS.Ino && mine.Dev == processNS.Dev {
		return s, nil
	}
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return s, fmt.Errorf("mesh: network namespace: %w", err)
	}
	s.ns = &netnsFile{f: f}
	return s, nil
}

func (s kernelStack) close() {
	if s.ns != nil {
		s.ns.mu.Lock()
		s.ns.f.Close()
		s.ns.f = nil
		s.ns.mu.Unlock()
	}
}

// in runs f on a thread in the stack's namespace.
func in[T any](s kernelStack, f func() (T, error)) (T, error) {
	if s.ns == nil {
		return f()
	}
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		back, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: fmt.Errorf("mesh: network namespace: %w", err)}
			runtime.UnlockOSThread()
			return
		}
		defer back.Close()
		if err := s.ns.enter(); err != nil {
			ch <- result{err: err}
			runtime.UnlockOSThread()
			return
		}
		v, err := f()
		ch <- result{v, err}
		// Back to the pool only in the namespace it came from; else the
		// thread dies with the goroutine.
		if unix.Setns(int(back.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
	}()
	r := <-ch
	return r.v, r.err
}

func (s kernelStack) dialTCP(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.addr, 0))}
	return in(s, func() (net.Conn, error) { return d.DialContext(ctx, "tcp6", to.String()) })
}

func (s kernelStack) dialUDP(to netip.AddrPort) (net.Conn, error) {
	return in(s, func() (net.Conn, error) {
		return net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.addr, 0)), net.UDPAddrFromAddrPort(to))
	})
}

func (s kernelStack) listenTCP(at netip.AddrPort) (net.Listener, error) {
	return in(s, func() (net.Listener, error) { return net.ListenTCP("tcp6", net.TCPAddrFromAddrPort(at)) })
}

func (s kernelStack) listenUDP(at netip.AddrPort) (net.PacketConn, error) {
	return in(s, func() (net.PacketConn, error) { return net.ListenUDP("udp6", net.UDPAddrFromAddrPort(at)) })
}
