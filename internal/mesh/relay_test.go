package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// A connection through a host's relay reaches the machine the relay maps
// it to, carries bytes both ways with half-close, and a target the relay
// does not own is a refused connect, not a broken stream.
func TestRelayReachesMachineOnOtherHost(t *testing.T) {
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	join(t, a, b)

	// The "machine" on b's host: a TCP echo on loopback.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	machine := netip.MustParseAddrPort("[fdaa::2:0:0:a00:5]:8080")
	serveInTest(t, func(ctx context.Context) {
		b.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
			if tgt != machine {
				return "", fmt.Errorf("%s is not a machine on this host", tgt)
			}
			return ln.Addr().String(), nil
		}, nil)
	})

	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	var c net.Conn
	eventually(t, 5*time.Second, "relay listening", func() error {
		c, err = a.DialRelay(dctx, b.Addr(), machine)
		return err
	})
	payload := bytes.Repeat([]byte("relayed "), 20000)
	go func() {
		c.Write(payload)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatalf("read through relay: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes back, sent %d", len(got), len(payload))
	}

	other := netip.MustParseAddrPort("[fdaa::2:0:0:a00:6]:8080")
	_, err = a.DialRelay(dctx, b.Addr(), other)
	if !errors.Is(err, ErrRelayRefused) {
		t.Fatalf("dial to a machine the host does not have: got %v, want ErrRelayRefused", err)
	}
}

// A UDP flow through the relay keeps datagrams apart both ways: the
// machine (a UDP echo on b's host) gets each datagram whole and its answers
// come back one per Read, a datagram larger than the reader's buffer cut as
// a UDP socket cuts it; a target that is not the host's machine is refused.
func TestRelayCarriesUDPFlows(t *testing.T) {
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	join(t, a, b)

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	machine := netip.MustParseAddrPort("[fdaa::2:0:0:a00:5]:53")
	observed := make(chan string, 4)
	serveInTest(t, func(ctx context.Context) {
		b.ServeRelayObserved(ctx, func(tgt netip.AddrPort) (string, error) {
			if tgt != machine {
				return "", fmt.Errorf("%s is not a machine on this host", tgt)
			}
			return pc.LocalAddr().String(), nil
		}, func(addr string) func() { observed <- addr; return func() {} }, nil)
	})

	dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer dcancel()
	var c net.Conn
	eventually(t, 5*time.Second, "relay listening", func() error {
		c, err = a.DialRelayUDP(dctx, b.Addr(), machine)
		return err
	})
	defer c.Close()
	if got := <-observed; got != pc.LocalAddr().String() {
		t.Errorf("observer told of %q, want the machine's %s", got, pc.LocalAddr())
	}
	buf := make([]byte, 65535)
	for _, msg := range []string{"one", "", "three", strings.Repeat("x", 9000)} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("answer to %d bytes: %v", len(msg), err)
		}
		if got := string(buf[:n]); got != "echo:"+msg {
			t.Fatalf("answer to %d bytes = %d bytes %.20q, want the echo of that one datagram", len(msg), n, got)
		}
	}
	// Two datagrams in a row stay two, and a short buffer cuts only its own.
	c.Write([]byte("first datagram"))
	c.Write([]byte("second"))
	small := make([]byte, 8)
	n, err := c.Read(small)
	if err != nil || string(small[:n]) != "echo:fir" {
		t.Errorf("short read = %q, %v; want the first datagram cut to 8 bytes", small[:n], err)
	}
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "echo:second" {
		t.Errorf("next read = %q, %v; want the second datagram whole", buf[:n], err)
	}

	if _, err := a.DialRelayUDP(dctx, b.Addr(), netip.MustParseAddrPort("[fdaa::2:0:0:a00:6]:53")); !errors.Is(err, ErrRelayRefused) {
		t.Errorf("UDP flow to a machine not on the host: %v, want ErrRelayRefused", err)
	}
}

// serveInTest runs serve until the test's cleanup, which ends its context
// and waits for it to return (a relay returns after its connections):
// registered after the nodes, it runs before their Close, so no relay
// still writes through a node's stack while its device closes (the race
// detector caught that once on CI).
func serveInTest(t *testing.T, serve func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A pipelined relay connection: the caller writes at once; the machine gets
// the bytes, and the first answer comes one round trip after the connect
// (the fastest of five over a 20 ms-each-way link: under 3 one-way delays
// more than the 2 round trips of TCP plus the request, while DialRelay
// then a request takes 3). A refused target fails the first Read with
// ErrRelayRefused, and what was written never reaches any machine.
func TestRelayPipelined(t *testing.T) {
	delay := func(c *Config) { c.OneWay = func(from, to string) time.Duration { return oneWay } }
	a, b := newNode(t, 1, delay), newNode(t, 2, delay)
	join(t, a, b)
	m := newEchoMachine(t) // pool_test.go
	machine := poolMachine
	serveInTest(t, func(ctx context.Context) {
		b.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
			if tgt != machine {
				return "", fmt.Errorf("%s is not a machine on this host", tgt)
			}
			return m.ln.Addr().String(), nil
		}, nil)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eventually(t, 10*time.Second, "relay listening", func() error {
		c, err := a.DialRelay(ctx, b.Addr(), machine)
		if err == nil {
			c.Close()
		}
		return err
	})
	firstAnswer := func(dial func() (net.Conn, error)) time.Duration {
		start := time.Now()
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo through the relay: %q, %v", buf, err)
		}
		return time.Since(start)
	}
	fastest := func(dial func() (net.Conn, error)) time.Duration {
		best := time.Hour
		for range 5 {
			best = min(best, firstAnswer(dial))
		}
		return best
	}
	pipelined := fastest(func() (net.Conn, error) { return a.DialRelayPipelined(ctx, b.Addr(), machine) })
	waiting := fastest(func() (net.Conn, error) { return a.DialRelay(ctx, b.Addr(), machine) })
	rtt := 2 * oneWay
	t.Logf("first answer over a %v round trip: pipelined %v, waiting for the relay's answer %v", rtt, pipelined, waiting)
	if pipelined < 2*rtt || pipelined > waiting-rtt/2 {
		t.Errorf("pipelined: first answer after %v, want 2 round trips (%v: TCP, then request and answer), a round trip less than waiting", pipelined, 2*rtt)
	}
	if waiting < 3*rtt {
		t.Errorf("waiting: first answer after %v, want at least 3 round trips", waiting)
	}

	before := len(m.received())
	other := netip.MustParseAddrPort("[fdaa::2:0:0:a00:6]:8080")
	c, err := a.DialRelayPipelined(ctx, b.Addr(), other)
	if err != nil {
		t.Fatalf("a pipelined dial returns before the relay answers, even for a refused target: %v", err)
	}
	defer c.Close()
	if _, err := c.Write(bytes.Repeat([]byte("POST /pay "), 1000)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, ErrRelayRefused) {
		t.Fatalf("first read of a refused pipelined connection: %v, want ErrRelayRefused", err)
	}
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, ErrRelayRefused) {
		t.Fatalf("second read: %v, want ErrRelayRefused again", err)
	}
	if got := len(m.received()) - before; got != 0 {
		t.Errorf("a machine received %d bytes written to a refused connection", got)
	}
}
