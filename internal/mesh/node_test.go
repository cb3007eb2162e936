package mesh

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

func TestThreeNodesExchangeTCP(t *testing.T) {
	nodes := []*Node{newNode(t, 1, nil), newNode(t, 2, nil), newNode(t, 3, nil)}
	join(t, nodes...)
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = echoServer(t, n)
	}
	payload := bytes.Repeat([]byte("mesh "), 50_000) // 250 kB: many packets
	for i, from := range nodes {
		for j := range nodes {
			if i == j {
				continue
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			if err := roundTrip(ctx, from, addrs[j], payload); err != nil {
				t.Errorf("node %d -> node %d: %v", i+1, j+1, err)
			}
			cancel()
		}
	}
}

func TestPeerLeavesAndComesBack(t *testing.T) {
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	join(t, a, b)
	addr := echoServer(t, b)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := roundTrip(ctx, a, addr, []byte("hello")); err != nil {
		t.Fatal(err)
	}

	if err := a.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	short, cancel2 := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel2()
	if err := roundTrip(short, a, addr, []byte("hello")); err == nil {
		t.Fatal("reached a peer that was removed")
	}
	eventually(t, 3*time.Second, "RTT of a removed peer dropped", func() error {
		if _, ok := a.RTTs()[b.Self(loopback).PublicKey]; ok {
			return fmt.Errorf("still has an RTT")
		}
		return nil
	})

	if err := a.SetPeers([]Peer{b.Self(loopback)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "re-added peer reachable", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		return roundTrip(ctx, a, addr, []byte("again"))
	})
}

func TestPayloadNeverOnTheWireInPlaintext(t *testing.T) {
	var caps []*captureBind
	capture := func(c *Config) {
		c.WrapBind = func(b conn.Bind) conn.Bind { cb := &captureBind{Bind: b}; caps = append(caps, cb); return cb }
	}
	a, b := newNode(t, 1, capture), newNode(t, 2, capture)
	join(t, a, b)
	addr := echoServer(t, b)
	marker := "perch-known-payload-0123456789"
	payload := []byte(strings.Repeat(marker, 2000))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := roundTrip(ctx, a, addr, payload); err != nil {
		t.Fatal(err)
	}
	for i, c := range caps {
		wire := c.bytes()
		if len(wire) < len(payload) {
			t.Fatalf("node %d sent only %d bytes for a %d-byte payload: capture is not seeing the traffic", i+1, len(wire), len(payload))
		}
		if bytes.Contains(wire, []byte(marker)) {
			t.Fatalf("node %d sent the payload in plaintext", i+1)
		}
	}
}

func TestSetPeersRejectsAddressOutsideMesh(t *testing.T) {
	a := newNode(t, 1, nil)
	p := newNode(t, 2, nil).Self(loopback)
	p.Addr = netip.MustParseAddr("2001:db8::1")
	if err := a.SetPeers([]Peer{p}); err == nil || !strings.Contains(err.Error(), "fdaa::/16") {
		t.Fatalf("want an error naming the mesh range, got %v", err)
	}
}

func TestMTUOutOfRangeIsAnError(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, mtu := range []int{576, 65535} {
		n, err := New(Config{Key: key, Addr: netip.MustParseAddr("fdaa::9"), MTU: mtu})
		if err == nil {
			n.Close()
			t.Fatalf("New with MTU %d: no error", mtu)
		}
		if !strings.Contains(err.Error(), "1280") {
			t.Errorf("New with MTU %d: %v; want the range it takes", mtu, err)
		}
	}
}
