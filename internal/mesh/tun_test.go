package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/mesh/meshtest"
	"golang.org/x/sys/unix"
)

// tunNodes starts two ModeTUN nodes, each in a network namespace of its
// own (hosts in one kernel), WireGuard's UDP over a veth pair between
// them, and waits until each has measured the other.
func tunNodes(t *testing.T, edit func(*Config)) (a, b *Node) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("TUN mode needs root (a TUN device, network namespaces)")
	}
	if err := TUNAvailable(); err != nil {
		t.Skipf("TUN mode: %v", err)
	}
	pair, err := meshtest.NewPair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pair.Close(); err != nil {
			t.Error(err)
		}
	})
	var nodes [2]*Node
	for i := range nodes {
		key, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{
			Key: key, Addr: netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i+1)), TUN: "perchmesh",
			RTTInterval: 100 * time.Millisecond,
			Logger:      slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", i+1),
		}
		if edit != nil {
			edit(&cfg)
		}
		if i == 0 && cfg.MTU != 0 {
			// Links that carry the mesh's packets whole.
			if err := pair.SetMTU(cfg.MTU + 80); err != nil {
				t.Fatal(err)
			}
		}
		err = pair.In(i, func() error {
			nodes[i], err = New(cfg)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nodes[i].Close() })
		if m := nodes[i].Mode(); m != ModeTUN {
			t.Fatalf("node %d runs in mode %s, want %s", i+1, m, ModeTUN)
		}
	}
	peers := []Peer{nodes[0].Self(pair.Addr[0]), nodes[1].Self(pair.Addr[1])}
	for _, n := range nodes {
		if err := n.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 12*time.Second, "mesh connected", func() error {
		for _, n := range nodes {
			if len(n.RTTs()) != 1 {
				return fmt.Errorf("node %s has not measured its peer yet", n.Addr())
			}
		}
		return nil
	})
	return nodes[0], nodes[1]
}

// sunk is what a sink read from its one connection.
type sunk struct {
	sum  [32]byte // sha256 of the bytes
	n    int64
	peer net.Addr
	err  error
}

// sink listens on n's mesh address for one TCP connection, reads it to
// its end, answers the digest of what it read over the same connection,
// and reports on the channel.
func sink(t *testing.T, n *Node) (net.Listener, <-chan sunk) {
	t.Helper()
	l, err := n.Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	gotc := make(chan sunk, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			gotc <- sunk{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r sunk
		copy(r.sum[:], h.Sum(nil))
		r.n, r.peer, r.err = n, c.RemoteAddr(), err
		if err == nil {
			_, r.err = c.Write(r.sum[:])
		}
		gotc <- r
	}()
	return l, gotc
}

// In ModeTUN the nodes' TCP is the kernel's, through their TUN devices:
// 16 MiB cross intact between two hosts' namespaces, both ways, on a
// connection between the two mesh addresses.
func TestTUNModeCarriesTCP(t *testing.T) {
	a, b := tunNodes(t, nil)
	l, gotc := sink(t, b)

	payload := make([]byte, 16<<20)
	rand.Read(payload)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("the connection is a %T, not the kernel's TCP", c)
	}
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	r := <-gotc
	if r.err != nil {
		t.Fatalf("receiver: %v", r.err)
	}
	if r.n != int64(len(payload)) || r.sum != sha256.Sum256(payload) {
		t.Fatalf("receiver got %d bytes (sha256 %x), sent %d (sha256 %x)", r.n, r.sum[:4], len(payload), sha256.Sum256(payload))
	}
	if want := a.Addr(); r.peer.(*net.TCPAddr).AddrPort().Addr() != want {
		t.Errorf("receiver saw the connection from %s, want the sender's mesh address %s", r.peer, want)
	}
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, r.sum[:]) {
		t.Fatalf("answer: %x, %v; want the digest", back, err)
	}
}

// On links with jumbo frames the mesh takes a larger MTU: the TUN
// device has it, and TCP over the mesh sends segments that need it.
func TestTUNModeJumboMTU(t *testing.T) {
	const mtu = 8920
	a, b := tunNodes(t, func(c *Config) { c.MTU = mtu })
	for _, n := range []*Node{a, b} {
		l, err := n.link.h.LinkByName(n.link.link.Attrs().Name)
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Attrs().MTU; got != mtu {
			t.Errorf("node %s: TUN device MTU %d, want %d", n.Addr(), got, mtu)
		}
	}
	l, gotc := sink(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := a.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	payload := make([]byte, 4<<20)
	if _, err := c.Write(payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = tc.CloseWrite()
	if r := <-gotc; r.err != nil || r.n != int64(len(payload)) {
		t.Fatalf("receiver got %d bytes, %v; sent %d", r.n, r.err, len(payload))
	}
	// The kernel's segment size for the connection: the device's MTU
	// less the IPv6 and TCP headers, far above a 1420-byte mesh's.
	rc, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mss int
	var serr error
	rc.Control(func(fd uintptr) { mss, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG) })
	if serr != nil {
		t.Fatal(serr)
	}
	if mss <= MTU-60 {
		t.Errorf("TCP over the mesh sends %d-byte segments; with a %d-byte MTU it should send more than %d", mss, mtu, MTU-60)
	}
}

// The relay works the same over the kernel's TCP: a machine of the far
// host is reached (pooled too), and one it does not own is a refused
// connect, which the edge takes for "not delivered".
func TestTUNModeRelay(t *testing.T) {
	a, b := tunNodes(t, nil)
	machine := netip.MustParseAddrPort("[fdaa::2:0:0:a00:5]:8080")
	echo := newEchoMachine(t).ln.Addr().String()
	serveInTest(t, func(ctx context.Context) {
		b.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
			if tgt != machine {
				return "", fmt.Errorf("%s is not a machine on this host", tgt)
			}
			return echo, nil
		}, nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	eventually(t, 10*time.Second, "relay listening", func() error {
		c, err = a.DialRelay(ctx, b.Addr(), machine)
		return err
	})
	if err := echoes(c, []byte("through the kernel's TCP")); err != nil {
		t.Fatal(err)
	}

	other := netip.MustParseAddrPort("[fdaa::2:0:0:a00:6]:8080")
	if _, err := a.DialRelay(ctx, b.Addr(), other); !errors.Is(err, ErrRelayRefused) {
		t.Fatalf("dial to a machine the host does not have: got %v, want ErrRelayRefused", err)
	}
	pc, err := a.DialRelayPipelined(ctx, b.Addr(), other)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if _, err := pc.Read(make([]byte, 1)); !errors.Is(err, ErrRelayRefused) {
		t.Fatalf("pipelined to a machine the host does not have: first read %v, want ErrRelayRefused", err)
	}

	pool := NewRelayPool(a)
	t.Cleanup(func() { pool.Close() })
	pool.Warm([]netip.Addr{b.Addr()})
	eventually(t, 10*time.Second, "pool filled", func() error {
		if pool.Idle(b.Addr()) == 0 {
			return fmt.Errorf("no idle connection to %s", b.Addr())
		}
		return nil
	})
	pooled, err := pool.Dial(ctx, b.Addr(), machine)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoes(pooled, []byte("pooled")); err != nil {
		t.Fatal(err)
	}
}

// Through a warm pool a request's first answer takes one mesh round trip
// in TUN mode too.
func TestTUNModeRelayPoolOneRoundTrip(t *testing.T) {
	a, b := tunNodes(t, func(c *Config) { c.OneWay = func(from, to string) time.Duration { return oneWay } })
	testPoolOneRoundTrip(t, a, b)
}

// echoes writes p to an echo and checks it comes back; it closes c.
func echoes(c net.Conn, p []byte) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(p); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(p))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if !bytes.Equal(got, p) {
		return fmt.Errorf("echo %q, sent %q", got, p)
	}
	return nil
}
