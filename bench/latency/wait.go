package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// cmdWait waits until every edge's route table has a machine of the app in
// the wanted region (-from iad, or "own": the edge's own region). It reads
// each edge's metrics instead of sending requests, so the first measured
// request through an edge is really its first to that machine (cold).
func cmdWait(args []string) error {
	fs := flag.NewFlagSet("wait", flag.ExitOnError)
	dir := fs.String("world", "", "the dev world's directory")
	app := fs.String("app", "hello", "app to wait for")
	from := fs.String("from", "own", `region whose machine each edge must route to, or "own"`)
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait")
	fs.Parse(args)
	info, err := devcluster.ReadInfo(*dir)
	if err != nil {
		return err
	}
	t0 := time.Now()
	pending := slices.Clone(info.Regions)
	for len(pending) > 0 {
		left := pending[:0]
		for _, r := range pending {
			want := *from
			if want == "own" {
				want = r.Code
			}
			if !edgeRoutes(r.EdgeAddr, *app, want) {
				left = append(left, r)
			}
		}
		pending = left
		if len(pending) == 0 {
			break
		}
		if time.Since(t0) > *timeout {
			var codes []string
			for _, r := range pending {
				codes = append(codes, r.Code)
			}
			return fmt.Errorf("after %s the edges of %s still have no machine of %s in the region asked for "+
				"(no perch_edge_active_connections series for it in their /metrics on port %d); see %s/logs",
				*timeout, strings.Join(codes, ","), *app, devcluster.MetricsPort, *dir)
		}
		time.Sleep(200 * time.Millisecond)
	}
	where := *from
	if where == "own" {
		where = "its own region"
	}
	fmt.Printf("every edge routes %s to a machine in %s (%.1fs)\n", *app, where, time.Since(t0).Seconds())
	return nil
}

// edgeRoutes reports whether the edge at addr has a machine of app in
// region in its route table: the edge exports a load gauge for each.
func edgeRoutes(addr, app, region string) bool {
	url := "http://" + net.JoinHostPort(addr, strconv.Itoa(devcluster.MetricsPort)) + "/metrics"
	resp, err := metricsClient.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "perch_edge_active_connections{") &&
			strings.Contains(l, `app="`+app+`"`) && strings.Contains(l, `region="`+region+`"`) {
			return true
		}
	}
	return false
}

var metricsClient = &http.Client{Timeout: 2 * time.Second}

// cmdSettle waits until every host of the mesh has measured its round trip
// to every other, so that no measurement pays for a WireGuard handshake or
// falls back to the geographic guess. A world without a mesh has nothing
// to wait for.
func cmdSettle(args []string) error {
	fs := flag.NewFlagSet("settle", flag.ExitOnError)
	dir := fs.String("world", "", "the dev world's directory")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait")
	fs.Parse(args)
	info, err := devcluster.ReadInfo(*dir)
	if err != nil {
		return err
	}
	// Hosts are the operator's: the admin token, not world.json's.
	admin, err := os.ReadFile(filepath.Join(info.Dir, "server", "admin-token"))
	if err != nil {
		return fmt.Errorf("read the world's admin token: %w", err)
	}
	c := api.NewClient(info.APIURL, strings.TrimSpace(string(admin)))
	t0 := time.Now()
	for {
		hosts, err := c.ListHosts(context.Background())
		if err != nil {
			return fmt.Errorf("list hosts: %w", err)
		}
		if err := worldUp(info, hosts); err != nil {
			return err
		}
		var mesh []api.Host
		for _, h := range hosts {
			if h.MeshKey != "" && h.Status == api.HostUp && h.Role != api.HostRoleControl {
				mesh = append(mesh, h)
			}
		}
		if len(mesh) == 0 {
			fmt.Println("no host is in a mesh: nothing to wait for")
			return nil
		}
		missing := missingPairs(mesh)
		if len(missing) == 0 {
			fmt.Printf("mesh settled: %d hosts, every pair measured (%.1fs)\n", len(mesh), time.Since(t0).Seconds())
			return nil
		}
		if time.Since(t0) > *timeout {
			// Measure anyway: the report shows what each city got.
			fmt.Printf("warning: after %s, %d pairs of hosts have no round-trip time, e.g. %s\n", *timeout, len(missing), missing[0])
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// worldUp checks that every region's agent is running and its host up: an
// agent can die after the world came up, and a benchmark of the rest
// would look fine.
func worldUp(info devcluster.Info, hosts []api.Host) error {
	status := map[string]string{}
	for _, h := range hosts {
		status[h.ID] = h.Status
	}
	for _, r := range info.Regions {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", r.PID)); err != nil || status[r.HostID] == api.HostDown {
			return fmt.Errorf("the agent of %s (pid %d) is not running or its host is down; see %s",
				r.Code, r.PID, filepath.Join(info.Dir, "logs", "agent-"+r.Code+".log"))
		}
	}
	return nil
}

func missingPairs(hosts []api.Host) []string {
	var out []string
	for _, a := range hosts {
		for _, b := range hosts {
			if a.ID == b.ID {
				continue
			}
			if _, ok := a.RTT[b.ID]; !ok {
				out = append(out, a.Region+"->"+b.Region)
			}
		}
	}
	return out
}
