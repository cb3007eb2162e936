package anycast

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// handoffNet is three hosts (a, b, d) on a backbone (a bridge in a) and
// a client namespace linked to a and to b; the hosts all hold the
// anycast address 192.0.2.10, and the client's route to it moves from b
// to a mid-connection, as a router's does when b withdraws.
type handoffNet struct {
	id             string
	a, b, d, c     string // namespaces
	ha, hb, hd     *Handoff
	aAddr, bAddr   netip.Addr
	dAddr, anycast netip.Addr
	anycast6       netip.Addr
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newHandoffNet(t *testing.T) *handoffNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("flow handoff needs root (network namespaces, VXLAN, nftables)")
	}
	for _, bin := range []string{"ip", "nft", "bridge"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("flow handoff needs %s (iproute2, nftables: scripts/deps.sh)", bin)
		}
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	n := &handoffNet{id: hex.EncodeToString(b)}
	n.a, n.b, n.d, n.c = "aho-"+n.id+"-a", "aho-"+n.id+"-b", "aho-"+n.id+"-d", "aho-"+n.id+"-c"
	n.aAddr, n.bAddr, n.dAddr = netip.MustParseAddr("203.0.113.201"), netip.MustParseAddr("203.0.113.202"), netip.MustParseAddr("203.0.113.203")
	n.anycast = netip.MustParseAddr("192.0.2.10")
	n.anycast6 = netip.MustParseAddr("2001:db8:1::10")
	for _, ns := range []string{n.a, n.b, n.d, n.c} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// The backbone: a bridge in a, with b and d on it.
	run(t, "ip", "-n", n.a, "link", "add", "bb", "type", "bridge")
	run(t, "ip", "-n", n.a, "addr", "add", n.aAddr.String()+"/24", "dev", "bb")
	run(t, "ip", "-n", n.a, "link", "set", "bb", "up")
	for _, s := range []struct {
		ns, name string
		addr     netip.Addr
	}{{n.b, "b", n.bAddr}, {n.d, "d", n.dAddr}} {
		run(t, "ip", "-n", n.a, "link", "add", "bb-"+s.name, "type", "veth", "peer", "name", "bb", "netns", s.ns)
		run(t, "ip", "-n", n.a, "link", "set", "bb-"+s.name, "master", "bb", "up")
		run(t, "ip", "-n", s.ns, "addr", "add", s.addr.String()+"/24", "dev", "bb")
		run(t, "ip", "-n", s.ns, "link", "set", "bb", "up")
	}
	// The client, linked to a (198.51.100.200/30) and b (.204/30).
	run(t, "ip", "-n", n.c, "link", "add", "ca", "type", "veth", "peer", "name", "up0", "netns", n.a)
	run(t, "ip", "-n", n.c, "link", "add", "cb", "type", "veth", "peer", "name", "up0", "netns", n.b)
	run(t, "ip", "-n", n.c, "addr", "add", "198.51.100.202/30", "dev", "ca")
	run(t, "ip", "-n", n.c, "addr", "add", "198.51.100.206/30", "dev", "cb")
	run(t, "ip", "-n", n.c, "link", "set", "ca", "up")
	run(t, "ip", "-n", n.c, "link", "set", "cb", "up")
	run(t, "ip", "-n", n.a, "addr", "add", "198.51.100.201/30", "dev", "up0")
	run(t, "ip", "-n", n.a, "link", "set", "up0", "up")
	run(t, "ip", "-n", n.b, "addr", "add", "198.51.100.205/30", "dev", "up0")
	run(t, "ip", "-n", n.b, "link", "set", "up0", "up")
	run(t, "ip", "-n", n.a, "route", "add", "default", "via", "198.51.100.202")
	run(t, "ip", "-n", n.b, "route", "add", "default", "via", "198.51.100.206")
	// IPv6 on the client links: 2001:db8:c:a::/64 to a, 2001:db8:c:b::/64 to b.
	run(t, "ip", "-n", n.c, "addr", "add", "2001:db8:c:a::2/64", "dev", "ca", "nodad")
	run(t, "ip", "-n", n.c, "addr", "add", "2001:db8:c:b::2/64", "dev", "cb", "nodad")
	run(t, "ip", "-n", n.a, "addr", "add", "2001:db8:c:a::1/64", "dev", "up0", "nodad")
	run(t, "ip", "-n", n.b, "addr", "add", "2001:db8:c:b::1/64", "dev", "up0", "nodad")
	run(t, "ip", "-n", n.a, "-6", "route", "add", "default", "via", "2001:db8:c:a::2")
	run(t, "ip", "-n", n.b, "-6", "route", "add", "default", "via", "2001:db8:c:b::2")
	for _, ns := range []string{n.a, n.b, n.d} {
		run(t, "ip", "-n", ns, "addr", "add", n.anycast.String()+"/32", "dev", "lo")
		run(t, "ip", "-n", ns, "addr", "add", n.anycast6.String()+"/128", "dev", "lo", "nodad")
	}
	n.route(t, "198.51.100.205") // to b
	hosts := []netip.Addr{n.aAddr, n.bAddr, n.dAddr}
	for _, h := range []struct {
		p    **Handoff
		ns   string
		addr netip.Addr
	}{{&n.ha, n.a, n.aAddr}, {&n.hb, n.b, n.bAddr}, {&n.hd, n.d, n.dAddr}} {
		ho := &Handoff{Local: h.addr, NS: h.ns}
		if err := ho.Set([]netip.Addr{n.anycast, n.anycast6}, hosts, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ho.Close)
		*h.p = ho
	}
	return n
}

// route sends the client's packets to the anycast address through via
// (a's or b's address on its link; the IPv6 twin goes the same way).
func (n *handoffNet) route(t *testing.T, via string) {
	t.Helper()
	run(t, "ip", "-n", n.c, "route", "replace", n.anycast.String()+"/32", "via", via)
	via6 := map[string]string{"198.51.100.201": "2001:db8:c:a::1", "198.51.100.205": "2001:db8:c:b::1"}[via]
	run(t, "ip", "-n", n.c, "-6", "route", "replace", n.anycast6.String()+"/128", "via", via6)
}

// serve answers each line on port 80 of the anycast address in ns with
// "<name>:<line>".
func serveLines(t *testing.T, ns, name string, addr netip.Addr) {
	t.Helper()
	ln, err := ListenIn(filepath.Join("/run/netns", ns), netip.AddrPortFrom(addr, 80).String())
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "%s:%s\n", name, sc.Text())
				}
			}()
		}
	}()
}

// exchange opens a connection from the client (through b), sends a
// line, moves the client's route to a, and sends another: it returns
// the two answers, waiting at most wait for them.
func (n *handoffNet) exchange(t *testing.T, wait time.Duration) (first, second string, err error) {
	return n.exchangeAt(t, n.anycast, wait)
}

// exchangeAt is exchange with the anycast address addr.
func (n *handoffNet) exchangeAt(t *testing.T, addr netip.Addr, wait time.Duration) (first, second string, err error) {
	t.Helper()
	n.route(t, "198.51.100.205")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialIn(ctx, filepath.Join("/run/netns", n.c), "tcp", netip.AddrPortFrom(addr, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	r := bufio.NewReader(c)
	fmt.Fprintln(c, "one")
	if first, err = r.ReadString('\n'); err != nil {
		return first, "", err
	}
	n.route(t, "198.51.100.201") // b withdrew: the client's packets go to a
	fmt.Fprintln(c, "two")
	second, err = r.ReadString('\n')
	return strings.TrimSpace(first), strings.TrimSpace(second), err
}

// TestHandoffCarriesAMovedFlow: a connection to b whose packets start
// arriving at a (the client's route moved) is reset by a without
// handoff; with b draining, a hands its packets (IPv4 and IPv6) to b through the VXLAN
// and b answers; with b and d draining, d (which has no such
// connection) drops its copies silently and b still answers. a's own
// new connections stay a's.
func TestHandoffCarriesAMovedFlow(t *testing.T) {
	n := newHandoffNet(t)
	for _, s := range []struct{ ns, name string }{{n.a, "a"}, {n.b, "b"}, {n.d, "d"}} {
		serveLines(t, s.ns, s.name, n.anycast)
		serveLines(t, s.ns, s.name, n.anycast6)
	}
	hosts := []netip.Addr{n.aAddr, n.bAddr, n.dAddr}
	all := []netip.Addr{n.anycast, n.anycast6}

	// No handoff: a resets b's connection.
	first, _, err := n.exchange(t, 5*time.Second)
	if first != "b:one" || !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("without handoff: first answer %q, then %v; want b:one, then a reset from a", first, err)
	}

	for _, targets := range [][]netip.Addr{{n.bAddr}, {n.bAddr, n.dAddr}} {
		if err := n.ha.Set(all, hosts, targets); err != nil {
			t.Fatal(err)
		}
		for _, addr := range all {
			first, second, err := n.exchangeAt(t, addr, 5*time.Second)
			if err != nil || first != "b:one" || second != "b:two" {
				t.Fatalf("handing off to %v, at %s: answers %q, %q, %v; want b:one, b:two", targets, addr, first, second, err)
			}
		}
		// A new connection arriving at a is a's own.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := DialIn(ctx, filepath.Join("/run/netns", n.c), "tcp", netip.AddrPortFrom(n.anycast, 80).String())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, "new")
		got, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.TrimSpace(got) != "a:new" {
			t.Fatalf("a new connection through a while handing off to %v: %q %v; want a:new", targets, got, err)
		}
		t.Logf("handing off to %v: the moved connections (IPv4 and IPv6) answered by b, a new one by a", targets)
	}

	// VXLAN from an address that is not a host of the world is dropped.
	if err := n.hb.Set(all, []netip.Addr{n.dAddr}, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.ha.Set(all, hosts, []netip.Addr{n.bAddr}); err != nil {
		t.Fatal(err)
	}
	// (Two seconds are enough: a handed-off answer takes well under one.)
	if _, _, err := n.exchange(t, 2*time.Second); err == nil {
		t.Fatal("b took handed-off packets from a, which is not in its hosts")
	}
	n.ha.Close()
	out, _ := exec.Command("ip", "-n", n.a, "link", "show", HandoffDevice).CombinedOutput()
	if !strings.Contains(string(out), "does not exist") {
		t.Errorf("after Close, %s is still in a: %s", HandoffDevice, out)
	}
}
