package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/mesh"
)

// TestInternalDNSFromInsideAMachine: a program in a machine resolves its
// app's machines by name with its ordinary resolver (Go's, reading the
// machine's /etc/resolv.conf), and gets their private IPv6 addresses: all
// of them, one region's, or one machine's.
func TestInternalDNSFromInsideAMachine(t *testing.T) {
	// Serial: every world's org is "personal" and its hosts are numbered
	// from 1, so two worlds on one kernel route the same machine /64s
	// (fdaa:<org>:<host>::/64, main table) to their bridges, and the
	// later one takes the other's: 6PN between hosts then fails.
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	ctx := context.Background()
	info := w.Info()
	iadEdge := info.Regions[0].EdgeAddr + ":80"
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad,ams", "--name", "names")
	mustPerch(t, w, dir, "deploy")
	expectAnswer(t, iadEdge, "names", "iad")

	// What the answers must be: each machine's 6PN, from its org's prefix and its host.
	hosts, err := w.Client().ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sub6 := map[string]netip.Prefix{}
	for _, h := range hosts {
		if p, err := netip.ParsePrefix(h.Subnet6); err == nil {
			sub6[h.ID] = p
		}
	}
	app, err := w.Client().GetApp(ctx, "names")
	if err != nil {
		t.Fatal(err)
	}
	machines, err := w.Client().ListMachines(ctx, "names", "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{} // region -> 6PN
	var all []string
	var amsID string
	for _, m := range machines {
		p, ok := sub6[m.HostID]
		if !ok {
			t.Fatalf("host %s of machine %s has no 6PN subnet", m.HostID, m.ID)
		}
		a := mesh.MachineAddr(app.Org, p, netip.MustParseAddr(m.PrivateIP)).String()
		want[m.Region] = a
		all = append(all, a)
		if m.Region == "ams" {
			amsID = m.ID
		}
	}
	slices.Sort(all)

	resolve := func(name string) []string {
		t.Helper()
		var got []string
		eventually(t, 15*time.Second, "the machine resolves "+name, func() (bool, string) {
			code, body, _, err := get(iadEdge, "names", "/dns/"+name)
			if err != nil || code != 200 {
				return false, fmt.Sprintf("%v %d %s", err, code, body)
			}
			var a struct{ Addrs []string }
			if err := json.Unmarshal([]byte(body), &a); err != nil {
				return false, body
			}
			got = a.Addrs
			slices.Sort(got)
			return true, ""
		})
		return got
	}
	if got := resolve("names.internal"); !slices.Equal(got, all) {
		t.Errorf("names.internal from inside a machine: got %v, want %v", got, all)
	}
	if got := resolve("ams.names.internal"); !slices.Equal(got, []string{want["ams"]}) {
		t.Errorf("ams.names.internal: got %v, want %v", got, want["ams"])
	}
	if got := resolve(amsID + ".vm.names.internal"); !slices.Equal(got, []string{want["ams"]}) {
		t.Errorf("%s.vm.names.internal: got %v, want %v", amsID, got, want["ams"])
	}
	// The iad machine reaches the ams machine, on another host, at its
	// 6PN address: through the hosts' TUN devices and the mesh.
	eventually(t, 15*time.Second, "the iad machine reaches the ams machine over 6PN", func() (bool, string) {
		url := "http://" + net.JoinHostPort(want["ams"], "8080") + "/"
		code, body, _, err := get(iadEdge, "names", "/fetch?url="+url)
		return err == nil && code == 200 && strings.Contains(body, "hello from ams"), fmt.Sprintf("%v %d %q", err, code, body)
	})
	// An app that does not exist is no such host, not a guess.
	code, body, _, err := get(iadEdge, "names", "/dns/nope.internal")
	if err != nil || code != 500 || !strings.Contains(body, "no such host") {
		t.Errorf("nope.internal: %v %d %q, want 500 no such host", err, code, body)
	}
}
