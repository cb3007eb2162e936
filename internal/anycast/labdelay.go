package anycast

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Fiber delay between the lab's routers without netem (not every kernel
// has sch_netem): a delayed link is a TAP device in each router's
// namespace, and this process carries the Ethernet frames between the two,
// holding each for the link's one-way delay, as the mesh's DelayBind does
// for WireGuard's datagrams. A TAP device lives as long as its descriptor:
// if this process dies the link goes with it.

// tapQueue bounds the frames in flight on one direction of a link, like
// a router's buffer: past it frames are dropped, never blocked.
const tapQueue = 4096

// tapLink is one delayed link: two TAP devices and the goroutines
// carrying frames between them.
type tapLink struct {
	a, b *os.File
	wg   sync.WaitGroup
}

// linkDelay is the configured one-way delay between a's and b's routers.
func (l *Lab) linkDelay(a, b string) time.Duration {
	if l.cfg.LinkDelay == nil {
		return 0
	}
	return l.cfg.LinkDelay(a, b)
}

// tapLink links namespace a (device aName, address aIP) and b (bName,
// bIP) with a /30 that holds every frame for delay each way.
func (l *Lab) tapLink(a, aName string, aIP netip.Addr, b, bName string, bIP netip.Addr, delay time.Duration) error {
	fa, err := openTap(filepath.Join("/run/netns", a), aName)
	if err != nil {
		return err
	}
	fb, err := openTap(filepath.Join("/run/netns", b), bName)
	if err != nil {
		fa.Close()
		return err
	}
	t := &tapLink{a: fa, b: fb}
	l.taps = append(l.taps, t)
	t.wg.Add(2)
	go t.carry(fa, fb, delay)
	go t.carry(fb, fa, delay)
	for _, s := range []struct {
		ns, dev string
		ip      netip.Addr
	}{{a, aName, aIP}, {b, bName, bIP}} {
		if err := l.ip(s.ns, "addr", "add", netip.PrefixFrom(s.ip, 30).String(), "dev", s.dev); err != nil {
			return err
		}
		if err := l.ip(s.ns, "link", "set", s.dev, "up"); err != nil {
			return err
		}
	}
	return nil
}

// openTap makes TAP device name in the network namespace at nsPath (the
// namespace /dev/net/tun is opened in is the device's).
func openTap(nsPath, name string) (*os.File, error) {
	var f *os.File
	err := inNS(nsPath, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("lab: open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("lab: tap %s: %w", name, err)
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("lab: make tap %s: %w", name, err)
		}
		// Non-blocking: the runtime's poller waits, and Close ends a Read.
		f = os.NewFile(uintptr(fd), "tap:"+name)
		return nil
	})
	return f, err
}

// carry moves frames from one device to the other, each leaving delay
// after it arrived, in order.
func (t *tapLink) carry(from, to *os.File, delay time.Duration) {
	defer t.wg.Done()
	type frame struct {
		due time.Time
		b   []byte
	}
	q := make(chan frame, tapQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range q {
			if d := time.Until(f.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := to.Write(f.b); errors.Is(err, os.ErrClosed) {
				for range q { // drain; the reader stops at its next read
				}
				return
			}
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, err := from.Read(buf)
		if err != nil {
			break
		}
		select {
		case q <- frame{due: time.Now().Add(delay), b: append([]byte(nil), buf[:n]...)}:
		default: // the queue is full: dropped, as a router would
		}
	}
	close(q)
	<-done
}

// close removes the link's devices and waits for its goroutines.
func (t *tapLink) close() {
	t.a.Close()
	t.b.Close()
	t.wg.Wait()
}

// validLabID says whether id can name the lab's namespaces and links.
func validLabID(id string) bool {
	if len(id) == 0 || len(id) > 8 {
		return false
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// LabResources is what a lab made outside this process's memory: what
// one must remove if the process that built the lab died without Close.
type LabResources struct {
	Namespaces []string       `json:"namespaces"`
	Bridge     string         `json:"bridge,omitempty"` // the management bridge, in the machine's own namespace
	Links      []string       `json:"links,omitempty"`  // the management links' ends on the bridge
	Birds      map[string]int `json:"birds"`            // city -> bird's pid
	Dir        string         `json:"dir"`              // bird's configs, sockets and logs
}

// Resources lists the lab's namespaces, bridge and routers' processes.
func (l *Lab) Resources() LabResources {
	r := LabResources{Birds: map[string]int{}, Dir: l.cfg.Dir}
	for _, c := range l.cfg.Cities {
		r.Namespaces = append(r.Namespaces, l.RouterNS(c.Name), l.ClientNS(c.Name))
		if c.Host {
			r.Namespaces = append(r.Namespaces, l.HostNS(c.Name))
		}
		if cmd := l.birds[c.Name]; cmd != nil && cmd.Process != nil {
			r.Birds[c.Name] = cmd.Process.Pid
		}
	}
	if l.cfg.Mgmt {
		r.Namespaces = append(r.Namespaces, l.ControlNS())
		r.Bridge = l.bridge()
		r.Links = append(r.Links, "acm-"+l.id+"-x")
		for _, c := range l.cfg.Cities {
			if c.Host {
				r.Links = append(r.Links, l.mgmtVeth(c.Name))
			}
		}
	}
	return r
}

// ID is the lab's id, the part of every name it made.
func (l *Lab) ID() string { return l.id }

// MgmtNet is the management network (Mgmt); its .1 is the bridge's
// address in the machine's own namespace.
func (l *Lab) MgmtNet() netip.Prefix { return l.mgmtNet }

// BridgeAddr is the management bridge's address (Mgmt): a process of the
// machine's own namespace listening there is reached by every host.
func (l *Lab) BridgeAddr() netip.Addr { return l.mgmtAddr(1) }

// ClientAddr6 is city's client's IPv6 address.
func (l *Lab) ClientAddr6(city string) netip.Addr { return l.client6[city] }
