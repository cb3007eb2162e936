package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func TestRenderHosts(t *testing.T) {
	now := t0.Add(time.Hour)
	hosts := []api.Host{
		{ID: "sin-9f00aa01", Region: "sin", Status: api.HostUp, Address: "127.0.1.3", MeshAddr: "fdaa:0:3::1", LastSeen: now.Add(-2 * time.Second),
			RTT: map[string]float64{"iad-1a2b3c4d": 241.37, "ams-5e6f7a8b": 157.9}},
		{ID: "iad-1a2b3c4d", Region: "iad", Status: api.HostUp, Address: "127.0.1.1", MeshAddr: "fdaa:0:1::1", LastSeen: now.Add(-time.Second),
			Disk: &api.HostDisk{ImageBytes: 1_234_000_000, ImageMaxBytes: 10e9, Images: 3, Layers: 14, FreeBytes: 52_400_000_000, TotalBytes: 105e9},
			RTT:  map[string]float64{"ams-5e6f7a8b": 92.04, "sin-9f00aa01": 241.2, "control-0": 0.42}},
		// ams has not measured anyone yet: its row is all dashes.
		{ID: "ams-5e6f7a8b", Region: "ams", Status: api.HostUp, Address: "127.0.1.2", MeshAddr: "fdaa:0:2::1", LastSeen: now.Add(-3 * time.Second)},
		// A host that is down keeps its stale times, which are not shown.
		{ID: "iad-77777777", Region: "iad", Status: api.HostDown, Address: "127.0.1.9", LastSeen: now.Add(-10 * time.Minute),
			RTT: map[string]float64{"ams-5e6f7a8b": 1}},
		{ID: "control-0", Role: api.HostRoleControl, Status: api.HostUp, Address: "127.0.0.1", MeshAddr: "fdaa:0:0::1", LastSeen: now,
			RTT: map[string]float64{"iad-1a2b3c4d": 3.14159}},
	}
	var b strings.Builder
	renderHosts(&b, hosts, now)
	want := []string{
		"ID            REGION   STATUS  ADDRESS    MESH ADDR    IMAGES                                DISK FREE        LAST SEEN",
		"control-0     control  up      127.0.0.1  fdaa:0:0::1  -                                     -                0s ago",
		"ams-5e6f7a8b  ams      up      127.0.1.2  fdaa:0:2::1  -                                     -                3s ago",
		"iad-1a2b3c4d  iad      up      127.0.1.1  fdaa:0:1::1  1.2 GB / 10 GB (3 images, 14 layers)  52 GB of 105 GB  1s ago",
		"iad-77777777  iad      down    127.0.1.9  -            -                                     -                10m ago",
		"sin-9f00aa01  sin      up      127.0.1.3  fdaa:0:3::1  -                                     -                2s ago",
		"",
		"Round-trip time over the mesh in ms (from row to column; - not measured):",
		"         control  ams  iad  sin",
		"control        -    -  3.1    -",
		"ams            -    -    -    -",
		"iad         0.42   92    -  241",
		"sin            -  158  241    -",
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")); diff != "" {
		t.Errorf("hosts output (-want +got):\n%s", diff)
	}
}

// A host whose mesh runs through the kernel's TUN device says so beside
// its mesh address.
func TestRenderHostsMeshMode(t *testing.T) {
	var b strings.Builder
	renderHosts(&b, []api.Host{
		{ID: "iad-1", Region: "iad", Status: api.HostUp, MeshAddr: "fdaa:0:1::1", MeshMode: "tun", LastSeen: t0},
		{ID: "ams-1", Region: "ams", Status: api.HostUp, MeshAddr: "fdaa:0:2::1", MeshMode: "netstack", LastSeen: t0},
	}, t0)
	if got := b.String(); !strings.Contains(got, "fdaa:0:1::1 (tun)") || strings.Contains(got, "fdaa:0:2::1 (") {
		t.Errorf("hosts = %q, want iad's mesh address marked (tun) and ams's unmarked", got)
	}
}

func TestRenderHostsUnmeasured(t *testing.T) {
	var b strings.Builder
	renderHosts(&b, []api.Host{{ID: "iad-1", Region: "iad", Status: api.HostUp, LastSeen: t0}}, t0)
	if got := b.String(); !strings.Contains(got, "iad-1") || !strings.Contains(got, "No round-trip times measured yet") {
		t.Errorf("hosts without RTT = %q, want the host and a line saying nothing is measured yet", got)
	}
	b.Reset()
	renderHosts(&b, nil, t0)
	if got := b.String(); !strings.Contains(got, "No hosts yet") || !strings.Contains(got, "perch agent") {
		t.Errorf("no hosts = %q, want it to say how to start one", got)
	}
}

// TestHostsAgainstServer registers hosts that report round-trip times, as
// agents do in their heartbeat, and reads them back with `perch hosts`.
func TestHostsAgainstServer(t *testing.T) {
	loggedOut(t)
	url, token := startServer(t)
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	ctx := context.Background()
	c := api.NewClient(url, token)
	iad, err := c.RegisterHost(ctx, api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 2, MemoryMB: 2048})
	if err != nil {
		t.Fatal(err)
	}
	ams, err := c.RegisterHost(ctx, api.Host{Region: "ams", Address: "127.0.0.2", CPUs: 2, MemoryMB: 2048,
		RTT: map[string]float64{iad.ID: 88.6}})
	if err != nil {
		t.Fatal(err)
	}

	out, err := run(t, "", "", "hosts")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	var amsRow string
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "ams ") {
			amsRow = l
		}
	}
	for _, want := range []string{iad.ID, ams.ID, "127.0.0.2", "Round-trip time"} {
		if !strings.Contains(out, want) {
			t.Errorf("perch hosts lacks %q:\n%s", want, out)
		}
	}
	if got := strings.Fields(amsRow); !cmp.Equal(got, []string{"ams", "-", "89"}) {
		t.Errorf("ams row of the matrix = %q, want ams to iad 89 ms:\n%s", amsRow, out)
	}

	out, err = run(t, "", "", "hosts", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var hs []api.Host
	if err := json.Unmarshal([]byte(out), &hs); err != nil || len(hs) != 2 {
		t.Fatalf("hosts --json = %q (%v), want 2 hosts", out, err)
	}
	for _, h := range hs {
		if h.ID == ams.ID && h.RTT[iad.ID] != 88.6 {
			t.Errorf("hosts --json: ams RTT = %v, want %s: 88.6", h.RTT, iad.ID)
		}
	}
}

func TestRenderHostsSameRegion(t *testing.T) {
	var b strings.Builder
	renderHosts(&b, []api.Host{
		{ID: "iad-1", Region: "iad", Status: api.HostUp, LastSeen: t0, RTT: map[string]float64{"iad-2": 0.3}},
		{ID: "iad-2", Region: "iad", Status: api.HostUp, LastSeen: t0, RTT: map[string]float64{"iad-1": 0.31}},
	}, t0)
	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []string{"       iad-1  iad-2", "iad-1      -   0.30", "iad-2   0.31      -"}
	if diff := cmp.Diff(want, got[len(got)-3:]); diff != "" {
		t.Errorf("two hosts in one region are told apart by id in the matrix (-want +got):\n%s", diff)
	}
}
