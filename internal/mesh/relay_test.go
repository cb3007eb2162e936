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
