package devcluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/geo"
)

// TestDevUpAnycast runs `perch dev up --anycast` as a user does, with
// regions lhr and ams and a client-only city, sin: an app with a
// dedicated IPv4 and IPv6 deployed to both regions answers `perch dev
// exec --from CITY -- curl` from each region's city with that region's
// edge; sin's client, whose router links to both over links as long as
// the fiber, reaches it with a round trip no shorter than the fiber's
// (ping through perch dev exec); bad cities and a world without a lab
// get clear errors; exec passes the command's exit code through; a
// second world started meanwhile has its own id and network; and `perch
// dev down` leaves no namespace, link, router or file of either lab, the
// second's perch dev up having been SIGKILLed.
func TestDevUpAnycast(t *testing.T) {
	t.Parallel() // see TestMain
	for _, bin := range []string{"bird", "birdc", "nsenter", "ping", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("perch dev up --anycast's test needs %s (bird2, util-linux, iputils-ping, curl: scripts/deps.sh)", bin)
		}
	}
	worldSlot(t)
	dir := t.TempDir()
	w1 := startDevUp(t, dir, "--regions", "lhr,ams", "--anycast-clients", "sin")
	info := w1.info
	a := info.Anycast
	if a == nil || len(a.Cities) != 3 || len(a.Lab.Namespaces) == 0 {
		t.Fatalf("world.json's anycast part: %+v; want three cities and the lab's namespaces", a)
	}
	for _, ns := range a.Lab.Namespaces {
		if !strings.Contains(ns, a.ID) {
			t.Errorf("namespace %s is not named after the world's id %s", ns, a.ID)
		}
	}

	// The sample app, with a dedicated IPv4 (and the IPv6 every app with
	// services gets), in both regions.
	ctx := context.Background()
	c := api.NewClient(info.APIURL, info.Token)
	ref := pushImageTo(t, info, "hello:v1")
	appDir := t.TempDir()
	// Commands are bounded: one that hangs fails the test instead of
	// holding the package (a perch command prints its goroutines on
	// SIGQUIT, and is killed 10 s later).
	perchIn := func(args ...string) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, perchBin, args...)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
		cmd.WaitDelay = 10 * time.Second
		cmd.Dir = appDir
		cmd.Env = append(os.Environ(), "PERCH_API_URL="+info.APIURL, "PERCH_API_TOKEN="+info.Token, "HOME="+appDir, "XDG_CONFIG_HOME="+appDir+"/.config")
		b, err := cmd.CombinedOutput()
		t.Logf("$ perch %s\n%s", strings.Join(args, " "), b)
		if err != nil {
			t.Fatalf("perch %s: %v", strings.Join(args, " "), err)
		}
	}
	perchIn("launch", "--image", ref, "--regions", "lhr,ams", "--name", "anyhello")
	ip, err := c.AssignIP(ctx, "anyhello", "v4")
	if err != nil {
		t.Fatalf("allocate a dedicated IPv4: %v", err)
	}
	addr := netip.MustParseAddr(ip.IP)
	if !anycast.LabPool.Contains(addr) {
		t.Fatalf("dedicated IPv4 %s is not in the world's pool %s", addr, anycast.LabPool)
	}
	perchIn("deploy", "--smoke-window", "0")
	var addr6 netip.Addr
	ips, err := c.ListIPs(ctx, "anyhello")
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is6() && !ip.Shared {
			addr6 = a
		}
	}
	if !anycast.LabPool6.Contains(addr6) {
		t.Fatalf("anyhello's addresses %+v: want a dedicated IPv6 from %s", ips, anycast.LabPool6)
	}

	// devExec is perch dev exec --from city -- args: output and exit code.
	devExec := func(city string, args ...string) (string, int) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, perchBin, append([]string{"dev", "exec", "--dir", dir, "--from", city, "--"}, args...)...)
		b, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(b), ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("perch dev exec: %v", err)
		}
		return string(b), 0
	}
	reply := regexp.MustCompile(`hello from (\w+) \(machine \w+\); edge (\w+)`)
	curl := func(city, url, want string) {
		t.Helper()
		eventually(t, 60*time.Second, fmt.Sprintf("curl %s from %s answered by %s", url, city, want), func() (bool, string) {
			body, code := devExec(city, "curl", "-sS", "--max-time", "5", "-g", "-H", "Host: anyhello.perch.local", url)
			m := reply.FindStringSubmatch(body)
			if code != 0 || m == nil {
				return false, fmt.Sprintf("exit %d: %s", code, body)
			}
			if want != "" && (m[1] != want || m[2] != want) {
				return false, body
			}
			return true, ""
		})
	}
	curl("lhr", "http://"+addr.String()+"/", "lhr")
	curl("ams", "http://"+addr.String()+"/", "ams")
	curl("ams", "http://"+net.JoinHostPort(addr6.String(), "80")+"/", "ams")
	curl("sin", "http://"+addr.String()+"/", "")

	// Round trips: sin's router reaches the address over a link holding
	// each frame for the fiber time, ams's client over none.
	w := geo.Default()
	fiber := min(w.FiberRTT("sin", "lhr", 1.5), w.FiberRTT("sin", "ams", 1.5))
	rttSin, rttAms := pingMin(t, devExec, "sin", addr), pingMin(t, devExec, "ams", addr)
	t.Logf("ping %s: from sin %s (fiber to the nearer region x1.5: %s), from ams %s", addr, rttSin, fiber, rttAms)
	if rttSin < fiber {
		t.Errorf("ping from sin took %s: want at least the fiber's round trip %s", rttSin, fiber)
	}
	if rttAms >= fiber {
		t.Errorf("ping from ams, whose own region announces the address, took %s: want well under sin's fiber time %s", rttAms, fiber)
	}

	// Exit codes and bad input.
	if _, code := devExec("lhr", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("perch dev exec -- sh -c 'exit 7' exited %d; want the command's 7", code)
	}
	if msg, code := devExec("nowhere", "true"); code == 0 || !strings.Contains(msg, `no city "nowhere"`) || !strings.Contains(msg, "lhr, ams, sin") {
		t.Errorf("perch dev exec --from nowhere: exit %d, %q; want an error naming the cities lhr, ams, sin", code, msg)
	}

	// A second world at once, a region and a client-only city: its own
	// id, network and namespaces; the first still answers. Its perch dev
	// up is then SIGKILLed, and perch dev down cleans up after it.
	dir2 := t.TempDir()
	w2 := startDevUp(t, dir2, "--regions", "fra", "--anycast-clients", "ams")
	a2 := w2.info.Anycast
	if a2 == nil || a2.ID == a.ID || a2.MgmtNet == a.MgmtNet {
		t.Fatalf("two worlds at once: the first has id %s and network %s, the second %+v; want their own", a.ID, a.MgmtNet, a2)
	}
	curl("lhr", "http://"+addr.String()+"/", "lhr")
	if err := w2.up.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w2.exited

	for _, w := range []*devUp{w1, w2} {
		dctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		down := exec.CommandContext(dctx, perchBin, "dev", "down", "--dir", w.dir)
		b, err := down.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("perch dev down --dir %s: %v\n%s", w.dir, err, b)
		}
	}
	select {
	case err := <-w1.exited:
		if err != nil {
			t.Errorf("perch dev up exited with %v:\n%s", err, w1.out.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("perch dev up did not exit:\n%s", w1.out.String())
	}
	assertLabGone(t, w1.info)
	assertLabGone(t, w2.info)
	// No world now: exec says so.
	if msg, code := devExec("lhr", "true"); code == 0 || !strings.Contains(msg, "no dev world in "+dir) {
		t.Errorf("perch dev exec with no world: exit %d, %q; want an error saying there is no world", code, msg)
	}
}

// pingMin is the shortest of three pings from city's client to addr.
func pingMin(t *testing.T, devExec func(string, ...string) (string, int), city string, addr netip.Addr) time.Duration {
	t.Helper()
	out, code := devExec(city, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "5", addr.String())
	m := regexp.MustCompile(`= ([0-9.]+)/`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("ping %s from %s: exit %d: %s", addr, city, code, out)
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// devUp is a perch dev up --anycast process.
type devUp struct {
	dir    string
	up     *exec.Cmd
	out    *lockedBuffer
	exited chan error
	info   devcluster.Info
}

// startDevUp runs perch dev up --anycast in dir with args and waits for
// its world.json.
func startDevUp(t *testing.T, dir string, args ...string) *devUp {
	t.Helper()
	w := &devUp{dir: dir, out: newLockedBuffer(), exited: make(chan error, 1)}
	w.up = exec.Command(perchBin, append([]string{"dev", "up", "--anycast", "--dir", dir, "--api", "127.0.0.1:0"}, args...)...)
	w.up.Stdout, w.up.Stderr = w.out, w.out
	if err := w.up.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.exited <- w.up.Wait() }()
	t.Cleanup(func() {
		if _, err := os.Stat(devcluster.InfoPath(dir)); err == nil {
			_ = exec.Command(perchBin, "dev", "down", "--dir", dir).Run()
		}
	})
	eventually(t, 90*time.Second, "world.json written", func() (bool, string) {
		select {
		case err := <-w.exited:
			t.Fatalf("perch dev up --anycast exited: %v\n%s", err, w.out.String())
		default:
		}
		var err error
		w.info, err = devcluster.ReadInfo(dir)
		return err == nil, w.out.String()
	})
	return w
}

// assertLabGone checks that nothing of the world info describes is left:
// machines, agents, and its lab's namespaces, links, routers and files.
func assertLabGone(t *testing.T, info devcluster.Info) {
	t.Helper()
	assertNothingLeft(t, info)
	a := info.Anycast
	for _, ns := range a.Lab.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	links, _ := exec.Command("ip", "-o", "link", "show").Output()
	if strings.Contains(string(links), "-"+a.ID+"-") || strings.Contains(string(links), "acb-"+a.ID) {
		t.Errorf("links of the lab %s left behind:\n%s", a.ID, links)
	}
	for city, pid := range a.Lab.Birds {
		if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil && strings.TrimSpace(string(comm)) == "bird" {
			t.Errorf("the router of %s (bird, pid %d) still runs", city, pid)
		}
	}
	if _, err := os.Stat(a.Lab.Dir); err == nil {
		t.Errorf("the routers' files in %s left behind", a.Lab.Dir)
	}
	for _, r := range info.Regions {
		if stat, err := os.ReadFile("/proc/" + strconv.Itoa(r.PID) + "/stat"); r.PID > 0 && err == nil && !strings.Contains(string(stat), ") Z") {
			t.Errorf("agent of %s (pid %d) still running", r.Code, r.PID)
		}
	}
	if _, err := os.Stat(devcluster.InfoPath(info.Dir)); err == nil {
		t.Errorf("world.json left behind in %s", info.Dir)
	}
}
