package hostnet_test

import (
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
)

// TestAddr6ReachesNeighbours: machines on one bridge reach each other by
// their 6PN addresses (on-link in the /64) as soon as Attach returns; a
// second Attach keeps the address, one with another address or none
// replaces it.
func TestAddr6ReachesNeighbours(t *testing.T) {
	b := hostnettest.New(t)
	a, c := newID(t, "h6"), newID(t, "h6")
	na, nc := b.Net6(t), b.Net6(t)
	pathA, pathC := attach(t, a, na), attach(t, c, nc)

	var ln net.Listener
	inNetns(t, pathA, func() (err error) {
		ln, err = net.Listen("tcp6", netip.AddrPortFrom(na.Addr6.Addr(), 0).String())
		return err
	})
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Write([]byte("from " + a))
			conn.Close()
		}
	}()
	inNetns(t, pathC, func() error {
		conn, err := net.DialTimeout("tcp6", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		got, err := io.ReadAll(conn)
		if string(got) != "from "+a {
			t.Errorf("read %q, %v from %s over 6PN", got, err, a)
		}
		return nil
	})

	if again, err := hostnet.Attach(a, na); err != nil || again != pathA {
		t.Fatalf("second Attach = %q, %v", again, err)
	}
	if got := globalAddrs(t, a, "-6"); !slices.Equal(got, []string{na.Addr6.String()}) {
		t.Errorf("after a second Attach eth0 has IPv6 %v, want only %v", got, na.Addr6)
	}
	moved := na
	moved.Addr6 = netip.PrefixFrom(na.Addr6.Addr().Next(), 64)
	if _, err := hostnet.Attach(a, moved); err != nil {
		t.Fatal(err)
	}
	if got := globalAddrs(t, a, "-6"); !slices.Equal(got, []string{moved.Addr6.String()}) {
		t.Errorf("after Attach with a new address eth0 has IPv6 %v, want only %v", got, moved.Addr6)
	}
	none := na
	none.Addr6 = netip.Prefix{}
	if _, err := hostnet.Attach(a, none); err != nil {
		t.Fatal(err)
	}
	if got := globalAddrs(t, a, "-6"); len(got) != 0 {
		t.Errorf("after Attach without Addr6 eth0 still has IPv6 %v", got)
	}
	if got := globalAddrs(t, a, "-4"); !slices.Equal(got, []string{na.Addr.String()}) {
		t.Errorf("eth0 has IPv4 %v, want only %v", got, na.Addr)
	}
}

func TestAddr6Rejected(t *testing.T) {
	b := hostnettest.New(t)
	for _, bad := range []string{"10.0.0.2/24", "::ffff:10.0.0.2/120", "fe80::2/64"} {
		n := b.Net(t)
		n.Addr6 = netip.MustParsePrefix(bad)
		id := newID(t, "h6bad")
		t.Cleanup(func() { hostnet.Detach(id) })
		if _, err := hostnet.Attach(id, n); err == nil || !strings.Contains(err.Error(), "IPv6") {
			t.Errorf("Attach with Addr6 %s: err = %v, want one about the IPv6 address", bad, err)
		}
	}
	if _, err := hostnet.Attach("h6bad", runtime.Net{Bridge: b.Name, Addr: netip.MustParsePrefix("10.0.0.2/24"),
		Gateway: netip.MustParseAddr("10.0.0.1"), Addr6: netip.PrefixFrom(netip.MustParseAddr("fdaa::2"), 200)}); err == nil {
		t.Error("Attach accepted an IPv6 prefix length of 200")
	}
}

// globalAddrs lists the global addresses of family on machine id's eth0.
func globalAddrs(t *testing.T, id, family string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", hostnet.NetnsName(id), "-o", family, "addr", "show", "dev", "eth0", "scope", "global").Output()
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) > 3 {
			addrs = append(addrs, f[3])
		}
	}
	return addrs
}
