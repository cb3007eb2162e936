package meshhost

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/mesh"
)

func member(region string, hosts map[string]api.Host, rtt map[string]time.Duration, lost map[string]bool) *Member {
	return &Member{cfg: Config{Region: region, World: geo.Default()}, hosts: hosts, rtt: rtt, lost: lost}
}

// The edge goes where the measured round trip is shortest, even against
// geography; equal times keep geographic order; a lost host's region is
// ranked as if unmeasured.
func TestRankFollowsMeasuredRTT(t *testing.T) {
	hosts := map[string]api.Host{
		"ams-1": {ID: "ams-1", Region: "ams"},
		"sin-1": {ID: "sin-1", Region: "sin"},
		"ord-1": {ID: "ord-1", Region: "ord"},
	}
	regions := []string{"sin", "ams", "ord", "iad"}

	// Geography alone, from iad: iad, ord, ams, sin.
	if got := member("iad", hosts, nil, nil).Rank(regions); !slices.Equal(got, []string{"iad", "ord", "ams", "sin"}) {
		t.Fatalf("unmeasured: got %v, want geographic order", got)
	}
	// Measured: the path to ord is congested, sin is fast.
	m := member("iad", hosts, map[string]time.Duration{
		"ams-1": 80 * time.Millisecond, "sin-1": 30 * time.Millisecond, "ord-1": 200 * time.Millisecond,
	}, nil)
	if got := m.Rank(regions); !slices.Equal(got, []string{"iad", "sin", "ams", "ord"}) {
		t.Fatalf("measured: got %v, want own region then by RTT", got)
	}
	// Within a millisecond is a tie: geography decides (no flapping on
	// a world without simulated latency).
	m = member("iad", hosts, map[string]time.Duration{
		"ams-1": 300 * time.Microsecond, "sin-1": 100 * time.Microsecond, "ord-1": 500 * time.Microsecond,
	}, nil)
	if got := m.Rank(regions); !slices.Equal(got, []string{"iad", "ord", "ams", "sin"}) {
		t.Fatalf("sub-millisecond noise: got %v, want geographic order", got)
	}
	// sin is lost: measured regions first, then the rest by geography.
	m = member("iad", hosts, map[string]time.Duration{
		"ams-1": 80 * time.Millisecond, "sin-1": 30 * time.Millisecond,
	}, map[string]bool{"sin-1": true})
	if got := m.Rank(regions); !slices.Equal(got, []string{"iad", "ams", "ord", "sin"}) {
		t.Fatalf("sin lost: got %v", got)
	}
	if m.Reachable("sin-1") || !m.Reachable("ams-1") || !m.Reachable("never-measured") {
		t.Fatal("Reachable must be false only for lost hosts")
	}
}

func TestPeerOfExplainsBadRecords(t *testing.T) {
	k, err := mesh.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	good := api.Host{ID: "h", Region: "iad", MeshKey: k.Public().String(), MeshEndpoint: "10.0.0.1:51820", MeshAddr: "fdaa:0:1::1", Subnet6: "fdaa:0:1::/64"}
	p, err := PeerOf(good)
	if err != nil {
		t.Fatal(err)
	}
	if p.PublicKey != k.Public() || p.Endpoint.String() != "10.0.0.1:51820" || p.Subnet.String() != "fdaa:0:1::/64" || p.Region != "iad" {
		t.Fatalf("peer %+v", p)
	}
	for name, c := range map[string]struct {
		edit func(*api.Host)
		want string
	}{
		"key":      {func(h *api.Host) { h.MeshKey = "nope" }, "public key"},
		"endpoint": {func(h *api.Host) { h.MeshEndpoint = "10.0.0.1" }, "endpoint"},
		"addr":     {func(h *api.Host) { h.MeshAddr = "10.0.0.1" }, "not in fdaa::/16"},
		"subnet":   {func(h *api.Host) { h.Subnet6 = "fdaa::1" }, "subnet6"},
	} {
		h := good
		c.edit(&h)
		if _, err := PeerOf(h); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error about %q", name, err, c.want)
		}
	}
}

// The relay pool warms the peers that may get traffic: reachable hosts
// with machines whose session is up, not a lost one, not the control
// plane (no relay), not a host that is no peer (no mesh key published),
// not a peer not measured yet (its first handshake is the probe's).
func TestReachablePeers(t *testing.T) {
	hosts := map[string]api.Host{
		"ams-1": {ID: "ams-1", MeshAddr: "fdaa::1"},
		"sin-1": {ID: "sin-1", MeshAddr: "fdaa::2"},
		"ctl":   {ID: "ctl", MeshAddr: "fdaa::3", Role: api.HostRoleControl},
		"new-1": {ID: "new-1", MeshAddr: "fdaa::4"},
		"fra-1": {ID: "fra-1", MeshAddr: "fdaa::5"},
	}
	rtt := map[string]time.Duration{"ams-1": 80 * time.Millisecond, "ctl": time.Millisecond}
	m := member("iad", hosts, rtt, map[string]bool{"sin-1": true})
	var k1, k2, k3, k5 mesh.PublicKey
	k1[0], k2[0], k3[0], k5[0] = 1, 2, 3, 5
	m.byKey = map[mesh.PublicKey]string{k1: "ams-1", k2: "sin-1", k3: "ctl", k5: "fra-1"}
	got := m.ReachablePeers()
	if len(got) != 1 || got[0].String() != "fdaa::1" {
		t.Fatalf("ReachablePeers = %v, want only ams-1's fdaa::1", got)
	}
}
