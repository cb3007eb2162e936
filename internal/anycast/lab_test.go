package anycast

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain runs a lab host when the test binary is started as one (in a
// host namespace, by startLabHost): the real Speaker announcing the
// region's anycast addresses to its router, and a TCP responder on them
// that answers with the region's name.
func TestMain(m *testing.M) {
	if os.Getenv("PERCH_ANYCAST_LAB_HOST") != "" {
		os.Exit(RunLabHost())
	}
	os.Exit(m.Run())
}

type labHost struct {
	cmd *exec.Cmd
}

func startLabHost(t *testing.T, lab *Lab, city string, addrs string) *labHost {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", lab.HostNS(city), exe)
	cmd.Env = append(os.Environ(), lab.HostEnv(city, addrs, lab.cfg.BFD)...)
	logf, err := os.Create(filepath.Join(lab.cfg.Dir, "host-"+city+".log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("lab host %s: %q %v: %s", city, line, err, b)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	h := &labHost{cmd: cmd}
	t.Cleanup(h.kill)
	return h
}

func (h *labHost) kill() {
	if h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
	}
}

// ask connects from city's client to the anycast address and returns the
// region that answered.
func ask(lab *Lab, city, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	c, err := lab.Dial(ctx, city, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(strings.TrimSpace(line), "region="), nil
}

// waitAnswer polls city's client until region answers, returning how long
// it took.
func waitAnswer(t *testing.T, lab *Lab, city, addr, region string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	var lastErr error
	for time.Since(start) < within {
		got, err := ask(lab, city, addr)
		if err == nil && got == region {
			return time.Since(start)
		}
		last, lastErr = got, err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("client in %s: %s never answered %s within %s (last: %q, %v)", city, region, addr, within, last, lastErr)
	return 0
}

// Six cities, five regions announcing one anycast address over eBGP to
// their bird2 routers: each city's client is answered by its own region,
// the city without one by its neighbour, a killed region's client moves
// to the next region, a SIGTERM'd region withdraws before it stops
// answering, so its client loses no connection (but one cut by the
// route's move in its handshake), and a frozen one is
// dropped by its router's hold timer.
func TestAnycastLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the anycast lab needs root (network namespaces, bird)")
	}
	for _, bin := range []string{"bird", "birdc", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the anycast lab needs %s (bird2 and iproute2: scripts/deps.sh)", bin)
		}
	}
	lab, err := NewLab(LabConfig{
		Cities: []LabCity{{"lhr", true}, {"cdg", true}, {"ams", true}, {"fra", true}, {"waw", false}, {"mad", true}},
		Links:  [][2]string{{"lhr", "ams"}, {"lhr", "cdg"}, {"cdg", "ams"}, {"ams", "fra"}, {"cdg", "fra"}, {"fra", "waw"}, {"cdg", "mad"}},
		Dir:    t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"lhr", "cdg", "ams", "fra", "waw", "mad"} {
				if out, err := lab.Birdc(c, "show", "protocols", "all"); err == nil {
					t.Logf("%s: birdc show protocols all:\n%s", c, out)
				}
				for _, f := range []string{"bird-" + c + ".log", "host-" + c + ".log"} {
					b, _ := os.ReadFile(filepath.Join(lab.cfg.Dir, f))
					t.Logf("%s:\n%s", f, b)
				}
			}
		}
	})
	const app = "192.0.2.10"
	addr := app + ":80"
	hosts := map[string]*labHost{}
	for _, c := range []string{"lhr", "cdg", "ams", "fra", "mad"} {
		hosts[c] = startLabHost(t, lab, c, app)
	}

	want := map[string]string{"lhr": "lhr", "cdg": "cdg", "ams": "ams", "fra": "fra", "mad": "mad", "waw": "fra"}
	start := time.Now()
	for city, region := range want {
		waitAnswer(t, lab, city, addr, region, 60*time.Second)
	}
	t.Logf("every city answered by its region (waw by fra) %s after the hosts started", time.Since(start).Round(time.Millisecond))

	// The routers' tables show the paths: a city with a host prefers its
	// own (AS path: the host's AS alone), waw has it through fra.
	for city := range want {
		out, err := lab.Birdc(city, "show", "route", "for", app, "primary", "all")
		if err != nil {
			t.Fatal(err)
		}
		path := fmt.Sprint(LabHostASN)
		if city == "waw" {
			path = fmt.Sprintf("%d %d", lab.RouterASN("fra"), LabHostASN)
		}
		if !strings.Contains(out, "BGP.as_path: "+path+"\n") {
			t.Errorf("router %s: best route to %s should have AS path %q:\n%s", city, app, path, out)
		}
	}
	if out, err := lab.Birdc("waw", "show", "route", "for", app, "all"); err == nil {
		t.Logf("waw's routes to %s:\n%s", app, out)
	}

	// mad's host dies: its client is answered by cdg, its only neighbour.
	killed := time.Now()
	hosts["mad"].kill()
	waitAnswer(t, lab, "mad", addr, "cdg", 30*time.Second)
	t.Logf("mad's host killed (SIGKILL): mad's client answered by cdg %s after the kill", time.Since(killed).Round(time.Millisecond))
	// ... and comes back when the host does.
	hosts["mad"] = startLabHost(t, lab, "mad", app)
	took := waitAnswer(t, lab, "mad", addr, "mad", 30*time.Second)
	t.Logf("mad's host back: mad's client answered by mad after %s", took.Round(time.Millisecond))

	// A graceful stop of ams: withdraw, then keep answering for the drain
	// time (2 s). ams's client moves to a neighbour before ams stops
	// answering, and no connection fails but, at most, the one whose
	// handshake the route's move cut in two: its SYN reached ams and its
	// ACK the neighbour, which resets it (seen in a capture: the reset
	// came two routers away). A lab host has nothing to hand such a flow
	// back; Perch's agents do (TestAnycastWorld's graceful stop).
	signalled := time.Now()
	if err := hosts["ams"].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var asked, failed int
	var moved string
	var lastErr error
	for time.Since(signalled) < 30*time.Second {
		got, err := ask(lab, "ams", addr)
		asked++
		if err != nil {
			failed++
			lastErr = err
			t.Logf("ams client during ams's graceful stop: %v", err)
		} else if got != "ams" {
			moved = got
			break
		} else {
			lastErr = nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	took = time.Since(signalled)
	if moved != "lhr" && moved != "cdg" && moved != "fra" {
		t.Fatalf("ams's client never moved to a neighbour after ams's SIGTERM (last %q)", moved)
	}
	if took >= 2*time.Second {
		t.Errorf("ams's client moved %s after the SIGTERM, once ams had stopped answering (2 s): the withdraw came late", took.Round(time.Millisecond))
	}
	if failed > 1 || (failed == 1 && lastErr == nil) {
		t.Errorf("%d of %d connections failed during ams's graceful stop; want none but the one in flight when the route moved", failed, asked)
	}
	t.Logf("ams stopped gracefully: its client moved to %s %s after the SIGTERM, after %d connections, %d failed", moved, took.Round(time.Millisecond), asked, failed)

	// lhr's host freezes (SIGSTOP): no FIN closes its session, so the
	// router's hold timer (3 s) must notice. lhr's client then reaches
	// cdg, its neighbour still announcing (ams stopped above).
	frozen := time.Now()
	if err := hosts["lhr"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, lab, "lhr", addr, "cdg", 30*time.Second)
	t.Logf("lhr's host frozen (SIGSTOP): lhr's client answered by cdg %s after, by the hold timer", time.Since(frozen).Round(time.Millisecond))
	_ = hosts["lhr"].cmd.Process.Signal(syscall.SIGCONT)
}

// BFD between a router and its host: the session comes up, and a host
// frozen (SIGSTOP: nothing closes its BGP session) is dropped by BFD,
// not by the hold timer: the router says why.
func TestAnycastLabBFD(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the anycast lab needs root (network namespaces, bird)")
	}
	for _, bin := range []string{"bird", "birdc", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the anycast lab needs %s (bird2 and iproute2: scripts/deps.sh)", bin)
		}
	}
	lab, err := NewLab(LabConfig{Cities: []LabCity{{"ams", true}, {"fra", true}}, Links: [][2]string{{"ams", "fra"}}, Dir: t.TempDir(), BFD: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	const app = "192.0.2.10"
	hosts := map[string]*labHost{"ams": startLabHost(t, lab, "ams", app), "fra": startLabHost(t, lab, "fra", app)}
	waitAnswer(t, lab, "ams", app+":80", "ams", 60*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := lab.Birdc("ams", "show", "bfd", "sessions")
		if err == nil && strings.Contains(out, lab.HostAddr("ams").String()) && strings.Contains(out, "Up") {
			t.Logf("ams: birdc show bfd sessions:\n%s", out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ams's router: no BFD session up with its host: %s %v", out, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := hosts["ams"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hosts["ams"].cmd.Process.Signal(syscall.SIGCONT) }()
	took := waitAnswer(t, lab, "ams", app+":80", "fra", 30*time.Second)
	out, err := lab.Birdc("ams", "show", "protocols", "all", "host")
	if err != nil || !strings.Contains(out, "BFD session down") {
		t.Fatalf("ams's router after its host froze: want the session dropped by BFD:\n%s %v", out, err)
	}
	t.Logf("ams's host frozen (SIGSTOP): dropped by BFD, ams's client answered by fra %s after (hold time: 3 s)", took.Round(time.Millisecond))
}
