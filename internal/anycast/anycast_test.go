package anycast

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/store"
)

func testStore(t *testing.T) *store.Store {
	t.Helper()
	nats, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "secret", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	st, err := store.Open(context.Background(), nats.URL(), "secret", "anycast-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestParsePools(t *testing.T) {
	p, err := ParsePools("192.0.2.0/24", "2001:db8:1::/48")
	if err != nil {
		t.Fatal(err)
	}
	if p.SharedV4() != netip.MustParseAddr("192.0.2.1") || !p.Contains(netip.MustParseAddr("2001:db8:1::9")) || p.Contains(netip.MustParseAddr("198.51.100.1")) {
		t.Fatalf("pools %v: shared %s", p, p.SharedV4())
	}
	for _, bad := range [][2]string{{"2001:db8::/48", ""}, {"", "192.0.2.0/24"}, {"192.0.2.0/31", ""}, {"nope", ""}} {
		if _, err := ParsePools(bad[0], bad[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePools(%q, %q) = %v, want ErrInvalid", bad[0], bad[1], err)
		}
	}
}

// A /29 pool: the network, the shared address and the broadcast are never
// dedicated, so five addresses are; concurrent allocations never share
// one, the sixth is refused as exhausted, a release frees one.
func TestAllocateReleaseExhaust(t *testing.T) {
	st := testStore(t)
	ctx := context.Background()
	pools, _ := ParsePools("192.0.2.0/29", "2001:db8:1::/126")
	a := &Allocator{KV: st.IPs, Pools: pools}

	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var wg sync.WaitGroup
	apps := []string{"a", "b", "c", "d", "e"}
	for _, app := range apps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			as, err := a.Allocate(ctx, app, "personal", KindV4)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := got[as.IP]; dup {
				t.Errorf("%s given to %s and %s", as.IP, other, app)
			}
			got[as.IP] = app
		}()
	}
	wg.Wait()
	for ip := range got {
		if ip == netip.MustParseAddr("192.0.2.0") || ip == netip.MustParseAddr("192.0.2.1") || ip == netip.MustParseAddr("192.0.2.7") {
			t.Errorf("allocated reserved address %s", ip)
		}
	}
	if len(got) != 5 {
		t.Fatalf("allocated %d addresses, want 5: %v", len(got), got)
	}
	if _, err := a.Allocate(ctx, "f", "personal", KindV4); !errors.Is(err, ErrExhausted) {
		t.Fatalf("sixth allocation: %v, want ErrExhausted", err)
	}
	// The shared address is given to any number of apps, once each.
	s1, err := a.Allocate(ctx, "f", "personal", KindSharedV4)
	if err != nil || s1.IP != pools.SharedV4() {
		t.Fatalf("shared: %v %v", s1, err)
	}
	if s2, err := a.Allocate(ctx, "f", "personal", KindSharedV4); err != nil || s2.IP != s1.IP {
		t.Fatalf("shared again: %v %v", s2, err)
	}

	var aIP netip.Addr
	for ip, app := range got {
		if app == "a" {
			aIP = ip
		}
	}
	if _, err := a.Release(ctx, "b", aIP, 0, false); !errors.Is(err, ErrNotAssigned) {
		t.Errorf("release of another app's address: %v", err)
	}
	if _, err := a.Release(ctx, "a", netip.MustParseAddr("203.0.113.5"), 0, false); !errors.Is(err, ErrOutsidePools) {
		t.Errorf("release outside the pools: %v", err)
	}
	if _, err := a.Release(ctx, "a", aIP, 2, false); !errors.Is(err, ErrInUse) {
		t.Errorf("release in use: %v", err)
	}
	if _, err := a.Release(ctx, "a", aIP, 2, true); err != nil {
		t.Fatalf("forced release: %v", err)
	}
	as, err := a.Allocate(ctx, "f", "personal", KindV4)
	if err != nil || as.IP != aIP {
		t.Fatalf("after the release: %v %v, want %s", as, err, aIP)
	}
	list, err := a.List(ctx, "f")
	if err != nil || len(list) != 2 || list[0].IP != aIP || !list[1].Shared() {
		t.Fatalf("list f: %v %v", list, err)
	}
	if _, err := a.Allocate(ctx, "f", "personal", Kind("v5")); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad kind: %v", err)
	}

	// Defaults: a dedicated v6 and the shared v4, once.
	made, err := a.EnsureDefaults(ctx, "g", "personal")
	if err != nil || len(made) != 2 || !made[0].IP.Is6() || made[1].IP != pools.SharedV4() {
		t.Fatalf("defaults: %v %v", made, err)
	}
	if made, err := a.EnsureDefaults(ctx, "g", "personal"); err != nil || len(made) != 0 {
		t.Fatalf("defaults again: %v %v", made, err)
	}
	if _, err := (&Allocator{KV: st.IPs}).Allocate(ctx, "g", "personal", KindV6); !errors.Is(err, ErrNoPool) {
		t.Errorf("no pool: %v", err)
	}
}

// On lo (a kernel without the dummy driver), SetAddrs adds and removes
// only its own addresses: loopback stays.
func TestLinkDeviceKeepsLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	ns := "acd-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Skipf("no network namespaces here: %v %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	_ = exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	d := &LinkDevice{Name: "lo", NS: ns}
	a, b := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8:1::1")
	if err := d.SetAddrs([]netip.Addr{a, b}); err != nil {
		t.Fatal(err)
	}
	if err := d.SetAddrs([]netip.Addr{b}); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command("ip", "-n", ns, "addr", "show", "dev", "lo").CombinedOutput()
	if !strings.Contains(string(out), "127.0.0.1/8") || !strings.Contains(string(out), "2001:db8:1::1/128") || strings.Contains(string(out), "192.0.2.10") {
		t.Fatalf("lo after SetAddrs([%s]):\n%s", b, out)
	}
}
