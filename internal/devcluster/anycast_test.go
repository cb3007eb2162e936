package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// The anycast world's cities: a host in each but arn, which its
// neighbour fra serves. Links follow geography; mrs's only neighbour is
// cdg, arn's only neighbour is fra.
var (
	anycastCities = []anycast.LabCity{{Name: "lhr", Host: true}, {Name: "cdg", Host: true}, {Name: "ams", Host: true},
		{Name: "fra", Host: true}, {Name: "arn"}, {Name: "mrs", Host: true}}
	anycastLinks = [][2]string{{"lhr", "ams"}, {"lhr", "cdg"}, {"cdg", "ams"}, {"ams", "fra"}, {"cdg", "fra"}, {"fra", "arn"}, {"cdg", "mrs"}}
	// anycastHome is the region whose edge should answer each city.
	anycastHome = map[string]string{"lhr": "lhr", "cdg": "cdg", "ams": "ams", "fra": "fra", "mrs": "mrs", "arn": "fra"}
)

// anycastWorld is Perch in the anycast lab: the control plane in the
// lab's control namespace, a perch agent in each city's host namespace
// peering over eBGP with its city's bird2 router, and an app with a
// dedicated IPv4 address deployed to every region.
type anycastWorld struct {
	lab     *anycast.Lab
	procs   *labNet // only its log directory: the processes' logs
	apiURL  string
	token   string
	client  *api.Client
	app     string
	addr    netip.Addr // the app's dedicated IPv4
	addr6   netip.Addr // the app's dedicated IPv6
	addr2   netip.Addr // otherdns's, the other app with port 53
	agents  map[string]*labProc
	agArgs  map[string][]string
	stateOf map[string]string
	// machines maps each machine id to its app.
	machines map[string]string
	// garbageConns counts the connections to the garbage BGP peer.
	garbageConns atomic.Int32
	// top is TestAnycastWorld's own t: an agent started again under it
	// runs until the world ends, not only its subtest.
	top *testing.T
}

// TestAnycastWorld runs the control plane and five agents, each in its
// own network namespace behind its city's bird2 router, announcing an
// app's dedicated address over BGP: each city's client reaches the one
// address and is answered by its own region's edge, routers' tables show
// the paths, a region cut off from the control plane keeps announcing
// and serving, a SIGTERM'd region loses no request, and a SIGKILL'd one
// is routed around and comes back.
func TestAnycastWorld(t *testing.T) {
	for _, bin := range []string{"bird", "birdc", "ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the anycast world needs %s (bird2, iproute2, util-linux: scripts/deps.sh)", bin)
		}
	}
	worldSlot(t)
	w := startAnycastWorld(t)
	t.Run("each city answered by its own region", func(t *testing.T) { testAnycastHome(t, w) })
	t.Run("routers' tables", func(t *testing.T) { testAnycastRoutes(t, w) })
	t.Run("port 53 per address", func(t *testing.T) { testAnycastPort53(t, w) })
	t.Run("bad peers logged", func(t *testing.T) { testAnycastBadPeers(t, w) })
	t.Run("cut off from the control plane", func(t *testing.T) { testAnycastCut(t, w) })
	t.Run("region drained and undrained", func(t *testing.T) { testAnycastDrain(t, w) })
	runs := 1
	if n, err := strconv.Atoi(os.Getenv("PERCH_ANYCAST_SIGTERM_RUNS")); err == nil && n > 1 {
		runs = n // to measure: each run stops and starts ams again
	}
	for i := range runs {
		t.Run(fmt.Sprintf("graceful stop %d", i+1), func(t *testing.T) { testAnycastSIGTERM(t, w) })
	}
	t.Run("killed region routed around", func(t *testing.T) { testAnycastSIGKILL(t, w) })
	t.Run("frozen region dropped by BFD", func(t *testing.T) { testAnycastFrozen(t, w) })
}

func startAnycastWorld(t *testing.T) *anycastWorld {
	t.Helper()
	lab, err := anycast.NewLab(anycast.LabConfig{Cities: anycastCities, Links: anycastLinks, Dir: t.TempDir(), Mgmt: true, BFD: true, BFDCities: []string{"lhr"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	ctl := lab.ControlAddr().String()
	w := &anycastWorld{
		lab:      lab,
		procs:    &labNet{dir: t.TempDir()},
		apiURL:   "http://" + net.JoinHostPort(ctl, "4280"),
		app:      "anyapp",
		agents:   map[string]*labProc{},
		agArgs:   map[string][]string{},
		stateOf:  map[string]string{},
		machines: map[string]string{},
		top:      t,
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, c := range anycastCities {
			if out, err := lab.Birdc(c.Name, "show", "protocols"); err == nil {
				t.Logf("%s: birdc show protocols:\n%s", c.Name, out)
			}
		}
	})
	dataDir := filepath.Join(t.TempDir(), "server")
	srv := w.procs.start(t, &labHost{NS: lab.ControlNS()}, "server", nil, perchBin, "server",
		"--listen", net.JoinHostPort(ctl, "4280"),
		"--nats-listen", net.JoinHostPort(ctl, "4281"),
		"--nats-advertise", "nats://"+net.JoinHostPort(ctl, "4281"),
		"--data-dir", dataDir, "--host-timeout", "4s",
		"--mesh-port", strconv.Itoa(meshPort), "--region", "lhr",
		"--anycast-v4", anycast.LabPool.String(), "--anycast-v6", anycast.LabPool6.String())
	eventually(t, 30*time.Second, "the control plane writes its admin token", func() (bool, string) {
		if done, err := srv.exited(); done {
			t.Fatalf("perch server exited: %v", err)
		}
		b, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
		w.token = strings.TrimSpace(string(b))
		return err == nil && w.token != "", fmt.Sprint(err)
	})
	w.client = api.NewClient(w.apiURL, w.token)
	ctx := context.Background()
	eventually(t, 30*time.Second, "the control plane's API answers", func() (bool, string) {
		if done, err := srv.exited(); done {
			t.Fatalf("perch server exited: %v", err)
		}
		_, err := w.client.ListHosts(ctx)
		return err == nil, fmt.Sprint(err)
	})

	// A BGP "peer" that answers with garbage, in the control namespace,
	// and one that refuses (lhr's host: nothing listens on 179 there):
	// fra's agent has both besides its router.
	garbage, err := anycast.ListenIn(filepath.Join("/run/netns", lab.ControlNS()), net.JoinHostPort(ctl, "179"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { garbage.Close() })
	go func() {
		for {
			c, err := garbage.Accept()
			if err != nil {
				return
			}
			w.garbageConns.Add(1)
			_, _ = c.Write([]byte("SSH-2.0-OpenSSH_9.2 this is not BGP\r\n"))
			c.Close()
		}
	}()

	stateRoot := t.TempDir()
	var regions []string
	for _, c := range anycastCities {
		if !c.Host {
			continue
		}
		city := c.Name
		regions = append(regions, city)
		stateDir := filepath.Join(stateRoot, city)
		w.stateOf[city] = stateDir
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := agent.Cleanup(ctx, stateDir, []string{perchBin, "runc-shim"}, nil); err != nil {
				t.Errorf("clean up the machines of %s: %v", city, err)
			}
		})
		me := lab.MgmtAddr(city).String()
		peer, peer6 := lab.HostPeer(city), lab.HostPeer6(city)
		w.agArgs[city] = []string{perchBin, "agent",
			"--region", city, "--server", w.apiURL,
			"--address", me, "--edge-addr", me,
			"--state-dir", stateDir, "--mesh-port", strconv.Itoa(meshPort),
			"--bgp-asn", strconv.Itoa(anycast.LabHostASN),
			"--bgp-peer", fmt.Sprintf("%s,%d", peer.Addr, peer.ASN),
			"--bgp-peer", fmt.Sprintf("%s,%d", peer6.Addr, peer6.ASN)}
		if city == "lhr" { // BFD only where the frozen-host subtest needs it: at 300 ms a loaded CI machine dropped live hosts
			w.agArgs[city] = append(w.agArgs[city], "--bgp-bfd")
		}
		if city == "fra" {
			w.agArgs[city] = append(w.agArgs[city], "--bgp-peer", ctl+",64999", "--bgp-peer", lab.MgmtAddr("lhr").String()+",64998")
		}
		jt, err := w.client.CreateJoinToken(ctx, api.JoinTokenRequest{Region: city})
		if err != nil {
			t.Fatalf("join token for %s: %v", city, err)
		}
		w.agents[city] = w.procs.start(t, &labHost{NS: lab.HostNS(city)}, "agent-"+city, []string{"PERCH_JOIN_TOKEN=" + jt.Token}, w.agArgs[city]...)
	}
	eventually(t, 60*time.Second, "the five agents register and heartbeat", func() (bool, string) {
		for name, p := range w.agents {
			if done, err := p.exited(); done {
				t.Fatalf("agent of %s exited: %v", name, err)
			}
		}
		up, err := w.hostsUp(ctx)
		return err == nil && len(up) == len(regions), fmt.Sprint(up, err)
	})

	ref := pushImageTo(t, devcluster.Info{Registry: net.JoinHostPort(ctl, "4280"), Token: w.token}, "hello:v1")
	dir := t.TempDir()
	w.addr = w.launchDNS(t, ref, dir, w.app, regions)
	ips, err := w.client.ListIPs(ctx, w.app)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is6() && !ip.Shared {
			w.addr6 = a
		}
	}
	if !anycast.LabPool6.Contains(w.addr6) {
		t.Fatalf("%s's addresses %+v: want a dedicated IPv6 from %s, given at its first deploy", w.app, ips, anycast.LabPool6)
	}
	// Another app with DNS on port 53 too, on its own address, in lhr.
	dir2 := t.TempDir()
	w.addr2 = w.launchDNS(t, ref, dir2, "otherdns", []string{"lhr"})
	ms, err := w.client.ListMachines(ctx, w.app, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.Region)
		w.machines[m.ID] = w.app
	}
	other, err := w.client.ListMachines(ctx, "otherdns", "")
	if err != nil || len(other) != 1 {
		t.Fatalf("otherdns's machines: %+v %v; want one", other, err)
	}
	w.machines[other[0].ID] = "otherdns"
	slices.Sort(got)
	want := slices.Clone(regions)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("want one machine in each of %v; got machines in %v", want, got)
	}
	return w
}

// launchDNS launches app from the sample image in regions with, besides
// its HTTP service, DNS on port 53 over UDP and raw TCP, allocates it a
// dedicated IPv4 and deploys it; it returns the address.
func (w *anycastWorld) launchDNS(t *testing.T, ref, dir, app string, regions []string) netip.Addr {
	t.Helper()
	ctx := context.Background()
	w.perch(t, dir, "launch", "--image", ref, "--regions", strings.Join(regions, ","), "--name", app)
	f, err := os.OpenFile(filepath.Join(dir, "perch.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(`
[env]
  HELLO_DNS_PORT = "53"

[[services]]
  protocol = "udp"
  internal_port = 53
  [[services.ports]]
    port = 53

[[services]]
  protocol = "tcp"
  internal_port = 53
  [[services.ports]]
    port = 53
`)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ip, err := w.client.AssignIP(ctx, app, "v4")
	if err != nil {
		t.Fatalf("allocate a dedicated IPv4 for %s: %v", app, err)
	}
	addr, err := netip.ParseAddr(ip.IP)
	if err != nil || !anycast.LabPool.Contains(addr) {
		t.Fatalf("dedicated IPv4 %q of %s: not in the pool %s (%v)", ip.IP, app, anycast.LabPool, err)
	}
	w.perch(t, dir, "deploy")
	return addr
}

// hostsUp lists the regions whose host the control plane has up.
func (w *anycastWorld) hostsUp(ctx context.Context) ([]string, error) {
	hosts, err := w.client.ListHosts(ctx)
	if err != nil {
		return nil, err
	}
	var up []string
	for _, h := range hosts {
		if h.Role == "" && h.Status == api.HostUp {
			up = append(up, h.Region)
		}
	}
	slices.Sort(up)
	return up, nil
}

func (w *anycastWorld) perch(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(perchBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PERCH_API_URL="+w.apiURL, "PERCH_API_TOKEN="+w.token, "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/.config")
	out, err := cmd.CombinedOutput()
	t.Logf("$ perch %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("perch %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// anycastAnswer is one GET from a city's client to the app's address.
type anycastAnswer struct {
	edge, machine string // regions, from the sample app's reply
	err           error
}

// get sends one GET from city's client to the app's dedicated address
// (a new connection each time), waiting up to 5 s.
func (w *anycastWorld) get(city string) anycastAnswer { return w.getAt(city, w.addr) }

// getAt is get to addr.
func (w *anycastWorld) getAt(city string, addr netip.Addr) anycastAnswer {
	return w.getWithin(city, addr, 5*time.Second)
}

// getWithin is getAt waiting at most timeout.
func (w *anycastWorld) getWithin(city string, addr netip.Addr, timeout time.Duration) anycastAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return w.lab.Dial(ctx, city, network, addr)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+net.JoinHostPort(addr.String(), "80")+"/", nil)
	if err != nil {
		return anycastAnswer{err: err}
	}
	req.Host = w.app + ".perch.local"
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return anycastAnswer{err: err}
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return anycastAnswer{err: err}
	}
	if resp.StatusCode != 200 {
		return anycastAnswer{err: fmt.Errorf("%s: %q", resp.Status, b)}
	}
	// "hello from R (machine M); edge E"
	var a anycastAnswer
	body := strings.TrimSpace(string(b))
	rest, ok := strings.CutPrefix(body, "hello from ")
	_, edge, ok2 := strings.Cut(rest, "; edge ")
	if !ok || !ok2 {
		return anycastAnswer{err: fmt.Errorf("not the sample app's answer: %q", body)}
	}
	a.machine, _, _ = strings.Cut(rest, " ")
	a.edge = edge
	return a
}

// waitEdge polls city's client until the edge of region answers,
// returning how long it took.
func (w *anycastWorld) waitEdge(t *testing.T, city, region string, within time.Duration) time.Duration {
	t.Helper()
	return w.waitEdgeAt(t, city, w.addr, region, within)
}

// waitEdgeAt is waitEdge at addr.
func (w *anycastWorld) waitEdgeAt(t *testing.T, city string, addr netip.Addr, region string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last anycastAnswer
	for time.Since(start) < within {
		a := w.getAt(city, addr)
		if a.err == nil && a.edge == region {
			return time.Since(start)
		}
		last = a
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("client in %s: the %s edge never answered at %s within %s (last: edge %q, %v)", city, region, addr, within, last.edge, last.err)
	return 0
}

func testAnycastHome(t *testing.T, w *anycastWorld) {
	start := time.Now()
	for _, addr := range []netip.Addr{w.addr, w.addr6} {
		for _, c := range anycastCities {
			w.waitEdgeAt(t, c.Name, addr, anycastHome[c.Name], 60*time.Second)
			// The edge sends the request to its own region's machine.
			if a := w.getAt(c.Name, addr); a.err != nil || a.edge != anycastHome[c.Name] || a.machine != a.edge {
				t.Errorf("client in %s at %s: answered by edge %q, machine %q (%v); want both %s", c.Name, addr, a.edge, a.machine, a.err, anycastHome[c.Name])
			}
		}
	}
	t.Logf("every city's client reached %s and %s and was answered by its own region's edge (arn's by fra) %s after the deploy",
		w.addr, w.addr6, time.Since(start).Round(time.Millisecond))
	// perch ips list says which regions announce each address (from the
	// hosts' heartbeats).
	want := []string{"ams", "cdg", "fra", "lhr", "mrs"}
	eventually(t, 30*time.Second, "perch ips list: every region announces the app's addresses", func() (bool, string) {
		ips, err := w.client.ListIPs(context.Background(), w.app)
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, ip := range ips {
			if (ip.IP == w.addr.String() || ip.IP == w.addr6.String()) && slices.Equal(ip.Regions, want) {
				n++
			}
		}
		return n == 2, fmt.Sprintf("%+v", ips)
	})
}

// testAnycastRoutes captures each router's best route to the address: a
// city with a host has it from its own host (AS path: the host's AS
// alone), arn, with none, from fra's.
func testAnycastRoutes(t *testing.T, w *anycastWorld) {
	for _, addr := range []netip.Addr{w.addr, w.addr6} {
		for _, c := range anycastCities {
			out, err := w.lab.Birdc(c.Name, "show", "route", "for", addr.String(), "all")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: birdc show route for %s all:\n%s", c.Name, addr, out)
			path := fmt.Sprint(anycast.LabHostASN)
			if !c.Host {
				path = fmt.Sprintf("%d %d", w.lab.RouterASN("fra"), anycast.LabHostASN)
			}
			best, err := w.lab.Birdc(c.Name, "show", "route", "for", addr.String(), "primary", "all")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(best, "BGP.as_path: "+path+"\n") {
				t.Errorf("router %s: best route to %s should have AS path %q:\n%s", c.Name, addr, path, best)
			}
		}
	}
}

// testAnycastCut takes lhr's host off the management network (its NATS
// and API link): the control plane marks it down, and it keeps
// announcing and serving what it has.
func testAnycastCut(t *testing.T, w *anycastWorld) {
	ctx := context.Background()
	if err := w.lab.CutMgmt("lhr", false); err != nil {
		t.Fatal(err)
	}
	restored := false
	defer func() {
		if !restored {
			_ = w.lab.CutMgmt("lhr", true)
		}
	}()
	eventually(t, 60*time.Second, "the control plane marks lhr's host down", func() (bool, string) {
		up, err := w.hostsUp(ctx)
		return err == nil && !slices.Contains(up, "lhr"), fmt.Sprint(up, err)
	})
	for i := range 20 {
		if a := w.get("lhr"); a.err != nil || a.edge != "lhr" || a.machine != "lhr" {
			t.Fatalf("request %d from lhr's client with lhr cut off from the control plane: edge %q machine %q, %v; want lhr", i, a.edge, a.machine, a.err)
		}
	}
	best, err := w.lab.Birdc("lhr", "show", "route", "for", w.addr.String(), "primary", "all")
	if err != nil || !strings.Contains(best, fmt.Sprintf("BGP.as_path: %d\n", anycast.LabHostASN)) {
		t.Fatalf("lhr's router, lhr's host cut off from the control plane: want the route from its host:\n%s %v", best, err)
	}
	t.Logf("lhr cut off from the control plane (marked down): still announcing %s and answering lhr's client", w.addr)
	if err := w.lab.CutMgmt("lhr", true); err != nil {
		t.Fatal(err)
	}
	restored = true
	eventually(t, 60*time.Second, "lhr's host back up at the control plane", func() (bool, string) {
		up, err := w.hostsUp(ctx)
		return err == nil && slices.Contains(up, "lhr"), fmt.Sprint(up, err)
	})
}

// testAnycastSIGTERM stops ams's agent gracefully while three loops of
// ams's client send requests back to back: the agent tells the other
// hosts over the mesh that it drains, withdraws, keeps serving while the
// routers move away, then waits for its connections to finish. No
// request fails: one whose connection straddles the routers' switch has
// its later packets reach a neighbour, which knows no such connection
// and hands them to ams (flow handoff), which answers. The agent started
// again takes ams back.
func testAnycastSIGTERM(t *testing.T, w *anycastWorld) {
	w.waitEdge(t, "ams", "ams", 30*time.Second)
	const loops = 3
	load := w.clientLoops("ams", loops)
	defer load.halt()
	time.Sleep(500 * time.Millisecond) // load on ams before the stop
	termed := time.Now()
	if err := w.agents["ams"].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.agents["ams"].done:
	case <-time.After(60 * time.Second):
		t.Fatal("ams's agent did not exit within 60 s of SIGTERM")
	}
	exited := time.Now()
	time.Sleep(500 * time.Millisecond) // and after it
	results := load.halt()
	// The routers have switched by the time the first answer from a
	// neighbour arrives.
	switched := exited
	for _, r := range results {
		if r.err == nil && r.edge != "ams" && r.end.Before(switched) {
			switched = r.end
		}
	}
	var failed, straddled, before, amsAfter, moved int
	for _, r := range results {
		if r.start.Before(switched) && r.end.After(switched) {
			straddled++ // in flight across the routers' switch
		}
		switch {
		case r.err != nil:
			failed++
			t.Errorf("request from ams's client started %+dms from SIGTERM (switch at +%s) failed: %v", r.start.Sub(termed).Milliseconds(), switched.Sub(termed).Round(time.Millisecond), r.err)
		case r.start.Before(termed):
			before++
		case r.edge == "ams":
			amsAfter++
		default:
			moved++
		}
	}
	if moved == 0 {
		t.Fatalf("ams's client never moved to a neighbour after ams's SIGTERM")
	}
	t.Logf("ams stopped gracefully (SIGTERM, exited after %s) under %d loops of requests: %d requests, %d before the signal, %d answered by ams after it, %d by a neighbour (the first done %s after it), %d in flight across the switch, %d failed (resets)",
		exited.Sub(termed).Round(time.Millisecond), loops, len(results), before, amsAfter, moved, switched.Sub(termed).Round(time.Millisecond), straddled, failed)
	w.agents["ams"] = w.procs.start(w.top, &labHost{NS: w.lab.HostNS("ams")}, "agent-ams-"+time.Now().Format("150405.000"), nil, w.agArgs["ams"]...)
	took := w.waitEdge(t, "ams", "ams", 60*time.Second)
	t.Logf("ams's agent started again: ams's client answered by ams after %s", took.Round(time.Millisecond))
}

// testAnycastDrain drains fra (perch regions drain fra) while two loops
// of fra's client send requests back to back: fra's hosts withdraw and
// the client moves to a neighbour, perch regions and perch ips list say
// fra drains, and no request fails (the connections the routers move
// mid-way are handed back to fra, whose edge keeps serving them);
// undrained, fra takes its client back, again with no failure (fra
// hands the neighbours' connections back to them).
func testAnycastDrain(t *testing.T, w *anycastWorld) {
	ctx := context.Background()
	w.waitEdge(t, "fra", "fra", 30*time.Second)
	load := w.clientLoops("fra", 2)
	defer load.halt()
	// answeredBy waits until fra's loops are answered by an edge
	// (not) in region since t0, returning when the first was.
	answeredBy := func(t0 time.Time, want func(string) bool, what string) time.Time {
		t.Helper()
		var at time.Time
		eventually(t, 30*time.Second, what, func() (bool, string) {
			results := load.sofar()
			for _, r := range results {
				if r.start.After(t0) && r.err == nil && want(r.edge) {
					at = r.end
					return true, ""
				}
			}
			return false, fmt.Sprint(len(results), " requests")
		})
		return at
	}
	time.Sleep(500 * time.Millisecond)
	dir := t.TempDir()
	drained := time.Now()
	w.perch(t, dir, "regions", "drain", "fra")
	moved := answeredBy(drained, func(e string) bool { return e != "fra" }, "fra's client answered by a neighbour after fra's drain")
	eventually(t, 30*time.Second, "perch regions and perch ips list show fra draining, announcing nothing", func() (bool, string) {
		regions, err := w.client.ListRegions(ctx)
		if err != nil {
			return false, err.Error()
		}
		ips, err := w.client.ListIPs(ctx, w.app)
		if err != nil || len(ips) == 0 {
			return false, fmt.Sprint(err)
		}
		ok := slices.ContainsFunc(regions, func(r api.Region) bool { return r.Code == "fra" && r.Draining })
		for _, ip := range ips {
			ok = ok && slices.Equal(ip.Draining, []string{"fra"}) && !slices.Contains(ip.Regions, "fra")
		}
		return ok, fmt.Sprintf("%+v %+v", regions, ips)
	})
	out := w.perch(t, dir, "regions")
	if !regexp.MustCompile(`(?m)^fra .*draining`).MatchString(out) {
		t.Errorf("perch regions: want fra shown draining:\n%s", out)
	}
	if a := w.get("arn"); a.err != nil || a.edge == "fra" {
		t.Errorf("arn's client with fra drained: edge %q, %v; want a neighbour of fra", a.edge, a.err)
	}
	time.Sleep(time.Second)
	undrained := time.Now()
	w.perch(t, dir, "regions", "undrain", "fra")
	back := answeredBy(undrained, func(e string) bool { return e == "fra" }, "fra's client answered by fra again after the undrain")
	time.Sleep(time.Second)
	results := load.halt()
	var failed, byFra, byOther int
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
			t.Errorf("request from fra's client started %+dms from the drain (%+dms from the undrain) failed: %v",
				r.start.Sub(drained).Milliseconds(), r.start.Sub(undrained).Milliseconds(), r.err)
		case r.edge == "fra":
			byFra++
		default:
			byOther++
		}
	}
	t.Logf("fra drained under 2 loops of requests: fra's client answered by a neighbour %s after perch regions drain, by fra again %s after perch regions undrain; %d requests, %d answered by fra, %d by a neighbour, %d failed",
		moved.Sub(drained).Round(time.Millisecond), back.Sub(undrained).Round(time.Millisecond), len(results), byFra, byOther, failed)
}

// testAnycastSIGKILL kills mrs's agent: mrs's client, retrying in its own
// loop, is answered by cdg (mrs's only neighbour) within a measured time,
// and every request after succeeds; the agent started again takes mrs
// back.
func testAnycastSIGKILL(t *testing.T, w *anycastWorld) {
	w.waitEdge(t, "mrs", "mrs", 30*time.Second)
	killed := time.Now()
	if err := w.agents["mrs"].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	var retried int
	for {
		a := w.get("mrs")
		if a.err == nil && a.edge == "cdg" {
			break
		}
		retried++
		if time.Since(killed) > 30*time.Second {
			t.Fatalf("mrs's client not answered by cdg within 30 s of mrs's agent's SIGKILL (last: %q %v)", a.edge, a.err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(killed)
	for i := range 20 {
		if a := w.get("mrs"); a.err != nil || a.edge != "cdg" {
			t.Fatalf("request %d from mrs's client after the failover: edge %q, %v; want cdg", i, a.edge, a.err)
		}
	}
	t.Logf("mrs's agent killed (SIGKILL): mrs's client answered by cdg %s after the kill (%d tries of its loop before), then 20 of 20 requests", took.Round(time.Millisecond), retried)
	<-w.agents["mrs"].done
	w.agents["mrs"] = w.procs.start(t, &labHost{NS: w.lab.HostNS("mrs")}, "agent-mrs-2", nil, w.agArgs["mrs"]...)
	back := w.waitEdge(t, "mrs", "mrs", 60*time.Second)
	t.Logf("mrs's agent started again: mrs's client answered by mrs after %s", back.Round(time.Millisecond))
}

// dnsTXT asks, from city's client over network (udp or tcp), the TXT
// record the sample app's DNS server answers with: "region=R machine=M".
func (w *anycastWorld) dnsTXT(city, network string, addr netip.Addr) (region, machine string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := w.lab.Dial(ctx, city, network, net.JoinHostPort(addr.String(), "53"))
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	cl := &dns.Client{Net: network, Timeout: 3 * time.Second}
	q := new(dns.Msg)
	q.SetQuestion("anycast.test.", dns.TypeTXT)
	r, _, err := cl.ExchangeWithConn(q, &dns.Conn{Conn: c})
	if err != nil {
		return "", "", err
	}
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok && len(txt.Txt) == 1 {
			for f := range strings.FieldsSeq(txt.Txt[0]) {
				if v, ok := strings.CutPrefix(f, "region="); ok {
					region = v
				} else if v, ok := strings.CutPrefix(f, "machine="); ok {
					machine = v
				}
			}
			return region, machine, nil
		}
	}
	return "", "", fmt.Errorf("no TXT answer: %v", r)
}

// testAnycastPort53: the app's DNS on port 53 of its dedicated address,
// over UDP and raw TCP, answers every city's client from the city's own
// region, while otherdns, with port 53 too on its own address, answers
// from its one machine, in lhr.
func testAnycastPort53(t *testing.T, w *anycastWorld) {
	for _, c := range anycastCities {
		for _, network := range []string{"udp", "tcp"} {
			var region, machine string
			eventually(t, 30*time.Second, fmt.Sprintf("DNS over %s from %s's client at %s:53", network, c.Name, w.addr), func() (bool, string) {
				var err error
				region, machine, err = w.dnsTXT(c.Name, network, w.addr)
				return err == nil, fmt.Sprint(err)
			})
			if region != anycastHome[c.Name] || w.machines[machine] != w.app {
				t.Errorf("%s:53/%s from %s's client: answered by machine %q of %q in %s; want %s's, in %s",
					w.addr, network, c.Name, machine, w.machines[machine], region, w.app, anycastHome[c.Name])
			}
			eventually(t, 30*time.Second, fmt.Sprintf("DNS over %s from %s's client at %s:53", network, c.Name, w.addr2), func() (bool, string) {
				var err error
				region, machine, err = w.dnsTXT(c.Name, network, w.addr2)
				return err == nil, fmt.Sprint(err)
			})
			if region != "lhr" || w.machines[machine] != "otherdns" {
				t.Errorf("%s:53/%s from %s's client: answered by machine %q of %q in %s; want otherdns's, in lhr",
					w.addr2, network, c.Name, machine, w.machines[machine], region)
			}
		}
	}
	t.Logf("port 53 over UDP and TCP: %s (%s) answered every city from its own region, %s (otherdns) from lhr", w.addr, w.app, w.addr2)
}

// testAnycastBadPeers: fra's agent has, besides its router, a peer that
// answers with garbage and one that refuses. It keeps retrying both, says
// so in perch hosts (sessions not established), and announces to its
// router and serves all the same.
func testAnycastBadPeers(t *testing.T, w *anycastWorld) {
	ctx := context.Background()
	eventually(t, 30*time.Second, "fra's agent retries the garbage peer", func() (bool, string) {
		return w.garbageConns.Load() >= 2, fmt.Sprint(w.garbageConns.Load(), " connections")
	})
	var sessions []api.BGPSession
	eventually(t, 30*time.Second, "perch hosts shows fra's four BGP sessions", func() (bool, string) {
		hosts, err := w.client.ListHosts(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, h := range hosts {
			if h.Region == "fra" && h.BGP != nil {
				sessions = h.BGP.Sessions
			}
		}
		return len(sessions) == 4, fmt.Sprintf("%+v", sessions)
	})
	router, router6 := w.lab.HostPeer("fra").Addr, w.lab.HostPeer6("fra").Addr
	for _, s := range sessions {
		a, _ := netip.ParseAddr(s.Peer)
		if (a == router || a == router6) != (s.State == "established") {
			t.Errorf("fra's BGP sessions %+v: want only its router's (%s, %s) established", sessions, router, router6)
		}
	}
	// The agent's log names both.
	for _, peer := range []string{w.lab.ControlAddr().String(), w.lab.MgmtAddr("lhr").String()} {
		eventually(t, 30*time.Second, "fra's agent logs that peer "+peer+" is not established", func() (bool, string) {
			b, err := os.ReadFile(w.agents["fra"].logPath)
			for line := range strings.Lines(string(b)) {
				if strings.Contains(line, "peer not established") && strings.Contains(line, "peer="+peer+" ") {
					return true, ""
				}
			}
			return false, fmt.Sprint(err)
		})
	}
	if a := w.get("fra"); a.err != nil || a.edge != "fra" {
		t.Errorf("fra's client with fra's bad peers: edge %q, %v; want fra", a.edge, a.err)
	}
	t.Logf("fra's BGP sessions: %+v; %d connections to the garbage peer; fra still answers its client", sessions, w.garbageConns.Load())
}

// testAnycastFrozen freezes lhr's agent (SIGSTOP: nothing closes its BGP
// sessions): its router drops it by BFD (perch agent --bgp-bfd), as the
// router's protocol state says, and lhr's client is answered by a
// neighbour; thawed, lhr answers lhr again.
func testAnycastFrozen(t *testing.T, w *anycastWorld) {
	w.waitEdge(t, "lhr", "lhr", 30*time.Second)
	out, err := w.lab.Birdc("lhr", "show", "bfd", "sessions")
	if err != nil || strings.Count(out, " Up ") < 2 {
		t.Fatalf("lhr's router: want BFD up with its host over IPv4 and IPv6:\n%s %v", out, err)
	}
	frozen := time.Now()
	if err := w.agents["lhr"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = w.agents["lhr"].cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	var moved string
	for time.Since(frozen) < 30*time.Second && moved == "" {
		// A short timeout: the frozen host's kernel still accepts
		// connections that its edge never answers.
		if a := w.getWithin("lhr", w.addr, 300*time.Millisecond); a.err == nil && a.edge != "lhr" {
			moved = a.edge
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(frozen)
	if moved != "cdg" && moved != "ams" {
		t.Fatalf("lhr's client not answered by a neighbour within 30 s of lhr's agent freezing (last %q)", moved)
	}
	proto, err := w.lab.Birdc("lhr", "show", "protocols", "all", "host")
	if err != nil || !strings.Contains(proto, "BFD session down") {
		t.Errorf("lhr's router after its host froze: want the session dropped by BFD:\n%s %v", proto, err)
	}
	t.Logf("lhr's agent frozen (SIGSTOP): dropped by BFD, lhr's client answered by %s %s after (hold time 3 s)", moved, took.Round(time.Millisecond))
	if err := w.agents["lhr"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed = true
	back := w.waitEdge(t, "lhr", "lhr", 60*time.Second)
	t.Logf("lhr's agent thawed: lhr's client answered by lhr after %s", back.Round(time.Millisecond))
}

// loopResult is one request of a city client's loop.
type loopResult struct {
	start, end time.Time
	edge       string
	err        error
}

// clientLoops sends requests from a city's client on n loops, back to
// back, until halt.
type clientLoops struct {
	mu      sync.Mutex
	results []loopResult
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func (w *anycastWorld) clientLoops(city string, n int) *clientLoops {
	l := &clientLoops{stop: make(chan struct{})}
	for range n {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				a := w.get(city)
				l.mu.Lock()
				l.results = append(l.results, loopResult{start, time.Now(), a.edge, a.err})
				l.mu.Unlock()
			}
		})
	}
	return l
}

// sofar is a copy of the results until now.
func (l *clientLoops) sofar() []loopResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.results)
}

// halt stops the loops (once), waits for them and returns every result.
func (l *clientLoops) halt() []loopResult {
	l.once.Do(func() { close(l.stop) })
	l.wg.Wait()
	return l.results
}
