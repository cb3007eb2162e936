package devcluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/hostnet"
)

// TestDevUpAndDown runs `perch dev up` as a user does, deploys into it, and
// checks that `perch dev down` (and, in a second round, Ctrl-C) stops every
// process and leaves no namespace, veth, bridge or mount behind. The first
// round's world has three servers (--servers 3): the CLI logged in from its
// world.json and the edges outlive a SIGKILL of the first server
// (devServersFailover).
func TestDevUpAndDown(t *testing.T) {
	t.Parallel() // see TestMain
	for _, how := range []string{"perch dev down", "ctrl-c"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			worldSlot(t)
			dir := t.TempDir()
			n := worldSeq.Add(1)
			edgeBase := fmt.Sprintf("127.%d.%d.1", 100+os.Getpid()%50, n)
			args := []string{"dev", "up", "--regions", "iad,ams", "--dir", dir, "--api", "127.0.0.1:0", "--edge-base", edgeBase}
			servers := 1
			if how == "perch dev down" {
				servers = 3
				args = append(args, "--servers", "3")
			}
			up := exec.Command(perchBin, args...)
			out := newLockedBuffer()
			up.Stdout, up.Stderr = out, out
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			exited, gone := make(chan error, 1), make(chan struct{})
			go func() { exited <- up.Wait(); close(gone) }()
			t.Cleanup(func() {
				// A failed test's world is stopped as after a crash of perch
				// dev up, before its directory is removed.
				up.Process.Kill()
				select {
				case <-gone:
				case <-time.After(30 * time.Second):
				}
				if b, err := exec.Command(perchBin, "dev", "down", "--dir", dir).CombinedOutput(); err != nil && !strings.Contains(string(b), "no dev world") {
					t.Errorf("perch dev down after the test: %v\n%s", err, b)
				}
			})
			var info devcluster.Info
			eventually(t, time.Duration(servers)*60*time.Second, "world.json written", func() (bool, string) {
				var err error
				info, err = devcluster.ReadInfo(dir)
				return err == nil, out.String()
			})
			// The dev CA's certificate is in the dir, and dev up says where.
			if _, err := os.Stat(info.CACert); err != nil || !strings.HasPrefix(info.CACert, dir) {
				t.Errorf("world.json's ca_cert %q is not a file in the dev dir: %v", info.CACert, err)
			}
			eventually(t, 10*time.Second, "perch dev up prints the dev CA", func() (bool, string) {
				return strings.Contains(out.String(), "dev CA         "+info.CACert), out.String()
			})
			if len(info.Servers) != servers || info.Servers[0].APIURL != info.APIURL {
				t.Fatalf("world.json's servers: %+v, want %d, the first at api_url %s", info.Servers, servers, info.APIURL)
			}
			for _, s := range info.Servers {
				if servers == 1 && s.PID != info.PID || servers > 1 && (s.PID == info.PID || syscall.Kill(s.PID, 0) != nil) {
					t.Errorf("server %s: pid %d, perch dev up's %d: want perch dev up's own with one server, else a running process of its own", s.Name, s.PID, info.PID)
				}
			}
			c := api.NewClient(info.APIURLs(), info.Token)
			ctx := context.Background()
			if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "app"}); err != nil {
				t.Fatal(err)
			}
			ref := pushImageTo(t, info, "hello:v1")
			var ids []string
			for _, r := range []string{"iad", "ams"} {
				m, err := c.CreateMachine(ctx, "app", api.CreateMachineRequest{Region: r, Config: api.MachineConfig{Image: ref}})
				if err != nil {
					t.Fatal(err)
				}
				if err := c.WaitMachine(ctx, "app", m.ID, api.StateStarted, 30*time.Second); err != nil {
					t.Fatal(err)
				}
				ids = append(ids, m.ID)
			}
			if n := countShims(info); n != 2 {
				t.Fatalf("want 2 machine shims running, got %d", n)
			}
			shims := 2
			if servers > 1 {
				shims += devServersFailover(t, dir, info, ref)
			}
			if how == "perch dev down" {
				// perch dev starts a killed agent again at once, writes its
				// new pid to world.json (which dev down then stops), and
				// the machines run on under their shims.
				killed := info.Regions[0].PID
				if err := syscall.Kill(killed, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				eventually(t, 30*time.Second, "perch dev up starts the killed agent again", func() (bool, string) {
					var err error
					info, err = devcluster.ReadInfo(dir)
					if err != nil {
						return false, err.Error()
					}
					pid := info.Regions[0].PID
					return pid != killed && pid > 0 && syscall.Kill(pid, 0) == nil, fmt.Sprintf("pid %d (killed %d)", pid, killed)
				})
				if !strings.Contains(out.String(), "agent exited; starting it again") {
					t.Errorf("perch dev up did not say it restarted the agent:\n%s", out.String())
				}
				if n := countShims(info); n != shims {
					t.Errorf("want %d machine shims running after the agent's restart, got %d", shims, n)
				}
			}
			if how == "ctrl-c" {
				up.Process.Signal(syscall.SIGINT)
			} else {
				down := exec.Command(perchBin, "dev", "down", "--dir", dir)
				if b, err := down.CombinedOutput(); err != nil {
					t.Fatalf("perch dev down: %v\n%s", err, b)
				}
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("perch dev up exited with %v:\n%s", err, out.String())
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("perch dev up did not exit:\n%s", out.String())
			}
			if n := countShims(info); n != 0 {
				t.Errorf("%d machine shims still running after the world stopped", n)
			}
			for _, r := range info.Regions {
				if r.PID > 0 && syscall.Kill(r.PID, 0) == nil {
					t.Errorf("agent of %s (pid %d) still running", r.Code, r.PID)
				}
			}
			for _, s := range info.Servers {
				if s.PID > 0 && syscall.Kill(s.PID, 0) == nil {
					t.Errorf("server %s (pid %d) still running", s.Name, s.PID)
				}
			}
			if _, err := os.Stat(devcluster.InfoPath(dir)); err == nil {
				t.Errorf("world.json left behind")
			}
			assertNothingLeft(t, info)
			for _, id := range ids {
				if _, err := os.Stat("/run/netns/" + hostnet.NetnsName(id)); err == nil {
					t.Errorf("network namespace of machine %s left behind", id)
				}
				if err := exec.Command("ip", "link", "show", hostnet.VethName(id)).Run(); err == nil {
					t.Errorf("veth of machine %s left behind", id)
				}
			}
		})
	}
}

// countShims counts the machine shims whose state lives in this world.
func countShims(info devcluster.Info) int {
	out, _ := exec.Command("ps", "-eo", "args").Output()
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "runc-shim") && strings.Contains(line, info.Dir) {
			n++
		}
	}
	return n
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func newLockedBuffer() *lockedBuffer { return &lockedBuffer{} }

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// devServersFailover is TestDevUpAndDown's world of three servers: perch
// dev status lists them, perch auth login takes every server's URL from
// world.json, an app deployed through the CLI serves from both edges, and
// after a SIGKILL of the first server (not restarted) perch status and
// perch scale still answer through the others while the edges serve on
// with no failed request. It returns the machines it added.
func devServersFailover(t *testing.T, dir string, info devcluster.Info, ref string) int {
	t.Helper()
	start := time.Now()
	home := t.TempDir()
	try := func(wd string, args ...string) (string, error) {
		t.Helper()
		// A command that hangs prints where (SIGQUIT) and fails.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, perchBin, args...)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
		cmd.WaitDelay = 10 * time.Second
		cmd.Dir = wd
		// The saved login, not the environment's.
		cmd.Env = append(os.Environ(), "PERCH_API_URL=", "PERCH_API_TOKEN=", "HOME="+home, "XDG_CONFIG_HOME="+home+"/.config")
		out, err := cmd.CombinedOutput()
		t.Logf("$ perch %s\n%s", strings.Join(args, " "), out)
		return string(out), err
	}
	cli := func(wd string, args ...string) string {
		t.Helper()
		out, err := try(wd, args...)
		if err != nil {
			t.Fatalf("perch %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	status := cli(home, "dev", "status", "--dir", dir)
	for _, s := range info.Servers {
		if !strings.Contains(status, fmt.Sprintf("server %s %s (pid %d) running", s.Name, s.APIURL, s.PID)) {
			t.Errorf("perch dev status does not show server %s running", s.Name)
		}
	}
	if out := cli(home, "auth", "login", "--dev", dir); !strings.Contains(out, "Logged in to "+info.APIURLs()+" ") {
		t.Errorf("perch auth login did not take every server's URL (%s) from world.json", info.APIURLs())
	}
	app := t.TempDir()
	cli(app, "launch", "--image", ref, "--regions", "iad,ams", "--name", "web")
	cli(app, "deploy", "--smoke-window", "0") // what is tested here is after it
	edges := map[string]string{}
	for _, r := range info.Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
		expectAnswer(t, edges[r.Code], "web", r.Code)
	}
	// Two machines per region, while the registry (s1's alone until it is
	// replicated between servers) is there to pull from.
	cli(app, "scale", "count", "2", "--yes")
	c := api.NewClient(info.APIURLs(), info.Token)
	started := func(want int) (bool, string) {
		ms, err := c.ListMachines(context.Background(), "web", "")
		if err != nil {
			return false, err.Error()
		}
		n := 0
		for _, m := range ms {
			if m.State == api.StateStarted {
				n++
			}
		}
		return n == want && len(ms) == want, fmt.Sprint(n, " started of ", len(ms))
	}
	eventually(t, 60*time.Second, "the app runs 2 started machines per region", func() (bool, string) { return started(4) })

	// Requests through both edges all along.
	var mu sync.Mutex
	var sent int
	var failed []string
	stop, done := make(chan struct{}), make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop); <-done }) }
	defer halt()
	go func() {
		defer close(done)
		for {
			for region, edge := range edges {
				code, body, _, err := get(edge, "web", "/")
				mu.Lock()
				sent++
				if err != nil || code != 200 {
					failed = append(failed, fmt.Sprintf("%s: %d %v %s", region, code, err, body))
				}
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	s1 := info.Servers[0]
	if err := syscall.Kill(s1.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	eventually(t, 10*time.Second, "server s1 is gone", func() (bool, string) {
		return syscall.Kill(s1.PID, 0) != nil, fmt.Sprint("pid ", s1.PID, " still there")
	})
	// The CLI's first URL is the dead server's: it answers from the
	// others. A read or write that meets a bucket whose stream leader was
	// on s1 fails (500, a timeout) until its new leader is elected: the
	// user runs it again. How long that lasts is measured.
	tries := 0
	eventually(t, 60*time.Second, "perch status answers through the surviving servers", func() (bool, string) {
		tries++
		out, err := try(app, "status")
		return err == nil && strings.Contains(out, "iad") && strings.Contains(out, "ams"), out
	})
	t.Logf("perch status answered at try %d, %s after the SIGKILL of s1", tries, time.Since(killed).Round(10*time.Millisecond))
	// A scale down: API writes, no image to pull (a new machine would
	// pull from s1's registry, gone with it).
	tries = 0
	eventually(t, 3*time.Minute, "perch scale succeeds through the surviving servers", func() (bool, string) {
		tries++
		out, err := try(app, "scale", "count", "1", "--yes")
		return err == nil, out
	})
	t.Logf("perch scale count 1 succeeded at try %d, %s after the SIGKILL of s1", tries, time.Since(killed).Round(10*time.Millisecond))
	eventually(t, 60*time.Second, "the app runs 1 started machine per region", func() (bool, string) { return started(2) })
	for region, edge := range edges {
		expectAnswer(t, edge, "web", region)
	}
	if out := cli(home, "dev", "status", "--dir", dir); !strings.Contains(out, "server s1 "+s1.APIURL+fmt.Sprintf(" (pid %d) exited", s1.PID)) {
		t.Errorf("perch dev status does not show the killed server exited")
	}
	halt()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("edge requests across the kill: %d sent, %d failed; the three-server part took %s", sent, len(failed), time.Since(start).Round(10*time.Millisecond))
	if sent < 50 {
		t.Errorf("only %d edge requests sent across the kill", sent)
	}
	reportFailed(t, "edge request failed after the first server's SIGKILL", failed)
	return 2
}
