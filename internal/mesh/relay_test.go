package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
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
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go b.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
		if tgt != machine {
			return "", fmt.Errorf("%s is not a machine on this host", tgt)
		}
		return ln.Addr().String(), nil
	}, nil)

	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
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
