package devcluster_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/geo"
)

// TestSimulatedLatencyWorld: with the world model on, crossing the Atlantic
// takes as long as it does. The hosts measure it over the mesh, and a
// request that enters at ams for a machine in iad pays the round trip,
// because the edge reaches the machine through the mesh (a direct dial on
// this shared kernel would take microseconds); a first request pays it
// once, on a relay connection opened ahead of need.
func TestSimulatedLatencyWorld(t *testing.T) {
	const inflation = 1.5
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}, Latency: inflation})
	info := w.Info()
	rtt := geo.Default().FiberRTT("iad", "ams", inflation)
	ids := map[string]string{}
	for _, r := range info.Regions {
		ids[r.Code] = r.HostID
	}

	// Measured round trip, as the hosts publish it (perch hosts shows it).
	eventually(t, 20*time.Second, "iad measures its round trip to ams", func() (bool, string) {
		hosts, err := w.Client().ListHosts(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hosts {
			if h.ID == ids["iad"] {
				ms := h.RTT[ids["ams"]]
				want := float64(rtt.Microseconds()) / 1000
				return ms > want*0.95 && ms < want*1.3, fmt.Sprintf("iad->ams %.1f ms, fiber model %.1f ms", ms, want)
			}
		}
		return false, "no iad host"
	})

	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "far")
	mustPerch(t, w, dir, "deploy")
	expectAnswer(t, info.Regions[0].EdgeAddr+":80", "far", "iad")

	// The first request through ams's edge, which has no connection to
	// the machine yet: its host keeps a relay connection to iad's host
	// open ahead of need (mesh.RelayPool), so the request and its answer
	// cross the ocean once. A new connection needs a round trip more
	// (TCP's handshake); the time is from sending the request (the edge
	// may not have the route yet: those attempts answer without a dial).
	var first time.Duration
	eventually(t, 30*time.Second, "ams's edge answers from iad", func() (bool, string) {
		start := time.Now()
		code, body, _, err := get(info.Regions[1].EdgeAddr+":80", "far", "/")
		first = time.Since(start)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK && strings.Contains(body, "hello from iad"), fmt.Sprintf("%d %s", code, body)
	})
	t.Logf("first request via ams's edge to the machine in iad: %v (round trip %v)", first, rtt)
	if first >= 2*rtt {
		t.Errorf("the first request via ams took %v, two round trips (%v) or more: no relay connection was ready", first, 2*rtt)
	}

	ttfb := func(edge string) time.Duration {
		var ds []time.Duration
		for range 5 {
			start := time.Now()
			code, body, _, err := get(edge, "far", "/")
			if err != nil || code != http.StatusOK || !strings.Contains(body, "hello from iad") {
				t.Fatalf("GET via %s: %v %d %q", edge, err, code, body)
			}
			ds = append(ds, time.Since(start))
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	local := ttfb(info.Regions[0].EdgeAddr + ":80")
	remote := ttfb(info.Regions[1].EdgeAddr + ":80")
	t.Logf("median time to answer: via iad's edge %v, via ams's edge %v (fiber round trip %v)", local, remote, rtt)
	if remote < rtt {
		t.Errorf("via ams the answer took %v, less than the iad-ams round trip %v: the request did not cross the simulated mesh", remote, rtt)
	}
	if remote > 3*rtt {
		t.Errorf("via ams the answer took %v, more than three round trips (%v): the edge should reuse its mesh connections", remote, 3*rtt)
	}
	if local > rtt/4 {
		t.Errorf("via iad the answer took %v: a machine in the edge's own region must not pay the ocean", local)
	}
}
