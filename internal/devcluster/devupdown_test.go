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
// process and leaves no namespace, veth, bridge or mount behind.
func TestDevUpAndDown(t *testing.T) {
	t.Parallel() // see TestMain
	for _, how := range []string{"perch dev down", "ctrl-c"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			worldSlot(t)
			dir := t.TempDir()
			n := worldSeq.Add(1)
			edgeBase := fmt.Sprintf("127.%d.%d.1", 100+os.Getpid()%50, n)
			up := exec.Command(perchBin, "dev", "up", "--regions", "iad,ams", "--dir", dir, "--api", "127.0.0.1:0", "--edge-base", edgeBase)
			out := newLockedBuffer()
			up.Stdout, up.Stderr = out, out
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- up.Wait() }()
			t.Cleanup(func() { up.Process.Kill() })
			var info devcluster.Info
			eventually(t, 60*time.Second, "world.json written", func() (bool, string) {
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
			c := api.NewClient(info.APIURL, info.Token)
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
				if n := countShims(info); n != 2 {
					t.Errorf("want 2 machine shims running after the agent's restart, got %d", n)
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
