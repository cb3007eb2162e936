package agent

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// anycastConns counts the open TCP connections on the given addresses
// from /proc/net/tcp: a stopping agent waits for it to reach 0. A
// listener alone is no connection; an accepted one is, until it ends.
func TestAnycastConnsCountsOpenConnections(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	other := netip.MustParseAddr("192.0.2.99")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	// Other tests' loopback connections may come and go: count only
	// this listener's port through a filter on the lines.
	count := func() int { return anycastConnsOnPort([]netip.Addr{lo}, port) }
	if n := count(); n != 0 {
		t.Fatalf("a listener alone: %d connections; want 0", n)
	}
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Fatalf("one accepted connection: %d; want 1", n)
	}
	if n := anycastConns([]netip.Addr{other}); n != 0 {
		t.Fatalf("connections on %s, which nothing uses: %d", other, n)
	}
	c.Close()
	s.Close()
	deadline := time.Now().Add(10 * time.Second)
	for count() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the connection closed on both ends still counts: %d", count())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F":                         "127.0.0.1",
		"0A0200C0":                         "192.0.2.10",
		"B80D0120000001000000000010000000": "2001:db8:1::10",
	} {
		if a, ok := procAddr(in); !ok || a.String() != want {
			t.Errorf("procAddr(%s) = %v %v; want %s", in, a, ok, want)
		}
	}
	if _, ok := procAddr("zz"); ok {
		t.Error("procAddr(zz) read an address")
	}
}
