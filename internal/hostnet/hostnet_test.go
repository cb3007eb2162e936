package hostnet_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
)

func newID(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func attach(t *testing.T, id string, n runtime.Net) string {
	t.Helper()
	path, err := hostnet.Attach(id, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hostnet.Detach(id); err != nil {
			t.Error(err)
		}
	})
	return path
}

func TestAttachConnectsBothWays(t *testing.T) {
	b := hostnettest.New(t)
	id := newID(t, "hn")
	n := b.Net(t)
	path := attach(t, id, n)
	if again, err := hostnet.Attach(id, n); err != nil || again != path {
		t.Fatalf("second Attach = %q, %v; want %q, nil", again, err, path)
	}

	// Host to machine: a listener inside the namespace on the machine's address.
	var ln net.Listener
	inNetns(t, path, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(n.Addr.Addr(), 0).String())
		return err
	})
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("from machine"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial machine from host: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "from machine" {
		t.Fatalf("read %q from machine", got)
	}

	// Machine to gateway: the default route reaches the bridge's address.
	hostLn, err := net.Listen("tcp4", netip.AddrPortFrom(n.Gateway, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		if c, err := hostLn.Accept(); err == nil {
			c.Close()
		}
	}()
	inNetns(t, path, func() error {
		c, err := net.DialTimeout("tcp4", hostLn.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})

	ids, err := hostnet.List()
	if err != nil || !slices.Contains(ids, id) {
		t.Fatalf("List() = %v, %v; want it to contain %s", ids, err, id)
	}
}

func TestDetachRemovesEverything(t *testing.T) {
	b := hostnettest.New(t)
	id := newID(t, "hn")
	path := attach(t, id, b.Net(t))
	for range 2 { // the second time finds nothing to do
		if err := hostnet.Detach(id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("netns %s still there after Detach: %v", path, err)
	}
	if _, err := net.InterfaceByName(hostnet.VethName(id)); err == nil {
		t.Errorf("veth %s still there after Detach", hostnet.VethName(id))
	}
	if ids, _ := hostnet.List(); slices.Contains(ids, id) {
		t.Errorf("List() still has %s after Detach", id)
	}
}

func TestAttachRefusesVethNameCollision(t *testing.T) {
	b := hostnettest.New(t)
	first := newID(t, "hncollide") + "a" // ids share their first 12 characters
	second := first[:12] + "zz"
	attach(t, first, b.Net(t))
	t.Cleanup(func() { hostnet.Detach(second) })
	if _, err := hostnet.Attach(second, b.Net(t)); err == nil || !strings.Contains(err.Error(), "first 12") {
		t.Fatalf("Attach of colliding id: err = %v, want an error naming the collision", err)
	}
	if err := hostnet.Detach(second); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(hostnet.VethName(first)); err != nil {
		t.Fatalf("the first machine's veth is gone after the other's Detach: %v", err)
	}
}

func TestCleanupByPrefix(t *testing.T) {
	b := hostnettest.New(t)
	prefix := newID(t, "hc")[:8] // ids must differ within the veth name's 12 characters
	mine := []string{prefix + "a", prefix + "b"}
	other := newID(t, "ho")
	for _, id := range append(slices.Clone(mine), other) {
		attach(t, id, b.Net(t))
	}
	if err := hostnet.Cleanup(prefix); err != nil {
		t.Fatal(err)
	}
	ids, err := hostnet.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range mine {
		if slices.Contains(ids, id) {
			t.Errorf("Cleanup(%q) left %s", prefix, id)
		}
	}
	if !slices.Contains(ids, other) {
		t.Errorf("Cleanup(%q) removed %s", prefix, other)
	}
}

func TestEnsureBridgeIsIdempotent(t *testing.T) {
	b := hostnettest.New(t)
	if err := hostnet.EnsureBridge(b.Name, b.Gateway); err != nil {
		t.Fatal(err)
	}
	iface, err := net.InterfaceByName(b.Name)
	if err != nil {
		t.Fatal(err)
	}
	all, _ := iface.Addrs()
	var v4 []string
	for _, a := range all {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			v4 = append(v4, p.String())
		}
	}
	if !slices.Equal(v4, []string{b.Gateway.String()}) {
		t.Fatalf("bridge IPv4 addresses = %v, want only %v", v4, b.Gateway)
	}
	if iface.Flags&net.FlagUp == 0 {
		t.Fatal("bridge is down")
	}
}

func TestDeleteBridgeLeavesOtherLinksAlone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root; run the tests as root")
	}
	if err := hostnet.DeleteBridge("lo"); err == nil {
		t.Fatal("DeleteBridge(lo) succeeded")
	}
	if _, err := net.InterfaceByName("lo"); err != nil {
		t.Fatal(err)
	}
	if err := hostnet.DeleteBridge("ptbmissing"); err != nil {
		t.Fatalf("deleting a missing bridge: %v", err)
	}
}

func TestBadInput(t *testing.T) {
	for _, id := range []string{"", "-x", "a/b", "a b", strings.Repeat("a", 65)} {
		if err := hostnet.CheckID(id); err == nil {
			t.Errorf("CheckID(%q) accepted", id)
		}
		if _, err := hostnet.Attach(id, runtime.Net{}); err == nil {
			t.Errorf("Attach(%q) accepted", id)
		}
	}
	if err := hostnet.EnsureBridge("br0", netip.MustParsePrefix("fd00::1/64")); err == nil {
		t.Error("EnsureBridge accepted an IPv6 gateway")
	}
	if err := hostnet.EnsureBridge("name/with/slash", netip.MustParsePrefix("10.0.0.1/24")); err == nil {
		t.Error("EnsureBridge accepted a bad name")
	}
}

// inNetns runs f on a thread inside the network namespace at path; sockets
// f opens stay in that namespace.
func inNetns(t *testing.T, path string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked, so it dies with the goroutine
		// instead of returning to the pool in the wrong namespace.
		goruntime.LockOSThread()
		ns, err := os.Open(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// The bridge keeps its MAC address while machines come and go: a Linux
// bridge left alone takes its lowest port's MAC and changes it when that
// veth goes, and the other machines' packets to the gateway (answers to
// the edge) then go to an address nobody has until their neighbour entry
// expires. After every machine but one is detached, the last one still
// reaches the gateway at once, with its old neighbour entry.
func TestBridgeKeepsItsMAC(t *testing.T) {
	b := hostnettest.New(t)
	mac := func() string {
		m, err := os.ReadFile("/sys/class/net/" + b.Name + "/address")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(m))
	}
	before := mac()
	var ids []string
	var nets []runtime.Net
	for range 6 {
		id := newID(t, "mac")
		n := b.Net(t)
		if _, err := hostnet.Attach(id, n); err != nil {
			t.Fatal(err)
		}
		ids, nets = append(ids, id), append(nets, n)
	}
	last := ids[len(ids)-1]
	t.Cleanup(func() { hostnet.Detach(last) })
	if got := mac(); got != before {
		t.Fatalf("bridge MAC %s became %s as machines were attached", before, got)
	}
	hostLn, err := net.Listen("tcp4", netip.AddrPortFrom(nets[0].Gateway, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer hostLn.Close()
	go func() {
		for {
			c, err := hostLn.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	path := "/run/netns/" + hostnet.NetnsName(last)
	dialGateway := func() error {
		var err error
		inNetns(t, path, func() error {
			var c net.Conn
			if c, err = net.DialTimeout("tcp4", hostLn.Addr().String(), 500*time.Millisecond); err == nil {
				c.Close()
			}
			return nil
		})
		return err
	}
	if err := dialGateway(); err != nil { // the machine learns the gateway's MAC
		t.Fatal(err)
	}
	for _, id := range ids[:len(ids)-1] {
		if err := hostnet.Detach(id); err != nil {
			t.Fatal(err)
		}
		if got := mac(); got != before {
			t.Fatalf("bridge MAC %s became %s when machine %s went", before, got, id)
		}
		if err := dialGateway(); err != nil {
			t.Fatalf("after machine %s went, the last machine cannot reach the gateway within 500ms: %v", id, err)
		}
	}
}
