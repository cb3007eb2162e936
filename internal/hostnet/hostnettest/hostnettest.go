// Package hostnettest gives tests a private host bridge and machine
// addresses on it, removed when the test ends. Only tests import it; they
// need root.
package hostnettest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/runtime"
)

// Bridge is a host bridge owned by one test.
type Bridge struct {
	Name    string
	Gateway netip.Prefix // the bridge's address, with the subnet's length
	// Subnet6 is the /64 of the machines' 6PN addresses (Net6), as a
	// host's subnet in the mesh; private to the bridge's machines.
	Subnet6 netip.Prefix

	mu   sync.Mutex
	next netip.Addr
}

// New makes a bridge with a /24 of 10.213.0.0/16 that no other link on the
// host uses, so tests in concurrent processes never collide. It skips the
// test when not run as root.
func New(t testing.TB) *Bridge {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create bridges and network namespaces; run the tests as root")
	}
	// The lock makes choosing and taking a subnet one step across processes.
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "perch-hostnettest.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	used := usedAddrs(t)
	start := os.Getpid()
	for i := range 256 {
		n := (start + i) % 256
		name := fmt.Sprintf("ptb%d", n)
		subnet := netip.MustParsePrefix(fmt.Sprintf("10.213.%d.0/24", n))
		if taken(subnet, used) || linkExists(name) {
			continue
		}
		gw := netip.PrefixFrom(subnet.Addr().Next(), 24)
		if err := hostnet.EnsureBridge(name, gw); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := hostnet.DeleteBridge(name); err != nil {
				t.Error(err)
			}
		})
		sub6 := netip.MustParsePrefix(fmt.Sprintf("fdaa:ffff:%x::/64", n))
		return &Bridge{Name: name, Gateway: gw, Subnet6: sub6, next: gw.Addr().Next()}
	}
	t.Fatal("hostnettest: no free /24 in 10.213.0.0/16")
	return nil
}

// Net returns an attachment with the next free address on the bridge.
func (b *Bridge) Net(t testing.TB) runtime.Net {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	addr := b.next
	if !b.Gateway.Contains(addr.Next()) { // addr is the broadcast address
		t.Fatalf("hostnettest: bridge %s has no addresses left", b.Name)
	}
	b.next = addr.Next()
	return runtime.Net{Bridge: b.Name, Addr: netip.PrefixFrom(addr, b.Gateway.Bits()), Gateway: b.Gateway.Addr()}
}

// Net6 is Net with a 6PN address too, as mesh.MachineAddr makes it for a
// machine of organisation "test" on the host whose subnet is Subnet6.
func (b *Bridge) Net6(t testing.TB) runtime.Net {
	t.Helper()
	n := b.Net(t)
	n.Addr6 = netip.PrefixFrom(mesh.MachineAddr("test", b.Subnet6, n.Addr.Addr()), 64)
	return n
}

func usedAddrs(t testing.TB) []netip.Prefix {
	t.Helper()
	out, err := exec.Command("ip", "-j", "-4", "addr", "show").Output()
	if err != nil {
		t.Fatalf("ip addr show: %v", err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("parse ip addr output: %v", err)
	}
	var used []netip.Prefix
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if addr, err := netip.ParseAddr(a.Local); err == nil {
				used = append(used, netip.PrefixFrom(addr, a.PrefixLen))
			}
		}
	}
	return used
}

func taken(subnet netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		if u.Overlaps(subnet) {
			return true
		}
	}
	return false
}

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}
