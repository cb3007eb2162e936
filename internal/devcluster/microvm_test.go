package devcluster_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/testimage"
)

// TestMicroVM: the sample app deployed with [[vm]] runtime = "microvm"
// boots as a VM (emulated where KVM cannot run it), the edge reaches it as
// it reaches a sandbox, it stops, starts, reports its exit code and is
// destroyed without a trace; and a VM whose app ignores SIGTERM is killed
// once the stop timeout has passed. One world serves both.
func TestMicroVM(t *testing.T) {
	// Serial: where KVM is not available (CI's VM) qemu emulates, and a
	// VM's boot is then CPU-bound, under the deploy's 1 minute bound.
	probe, err := microvm.New(microvm.Config{StateDir: t.TempDir(), Init: perchBin})
	if err == nil {
		err = probe.Check()
	}
	if err != nil {
		t.Skipf("this host cannot boot microVMs: %v", err)
	}
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	region := w.Info().Regions[0]
	edge := region.EdgeAddr + ":80"
	c := w.Client()
	ctx := context.Background()

	t.Run("sample app", func(t *testing.T) {
		ref := pushImage(t, w, "hello:vm")
		dir := t.TempDir()
		mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "vm")
		toml := filepath.Join(dir, "perch.toml")
		b, err := os.ReadFile(toml)
		if err != nil || !strings.Contains(string(b), "[[vm]]\n") {
			t.Fatalf("perch.toml from launch has no [[vm]]: %v\n%s", err, b)
		}
		b = []byte(strings.Replace(string(b), "[[vm]]\n", "[[vm]]\n  runtime = \"microvm\"\n", 1) + "\n[[restart]]\n  policy = \"never\"\n")
		if err := os.WriteFile(toml, b, 0o644); err != nil {
			t.Fatal(err)
		}
		mustPerch(t, w, dir, "deploy")
		expectAnswer(t, edge, "vm", "iad")
		m := onlyMachine(t, c, "vm", "iad")
		t.Cleanup(func() {
			if t.Failed() {
				dumpMachine(t, c, "vm", m.ID, filepath.Join(region.StateDir, "microvm", "machines", m.ID))
			}
		})
		if m.Config.Guest.Runtime != "microvm" {
			t.Fatalf("machine's runtime = %q, want microvm", m.Config.Guest.Runtime)
		}
		if !vmRunning(m.ID) {
			t.Fatalf("no qemu process for machine %s: it is not a VM", m.ID)
		}
		if out := mustPerch(t, w, dir, "status"); !strings.Contains(out, "microvm") {
			t.Errorf("perch status does not show the runtime:\n%s", out)
		}

		// Stop: the VM goes; start: a new one boots and serves.
		if err := c.StopMachine(ctx, "vm", m.ID, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "vm", m.ID, api.StateStopped, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the stopped machine's VM is gone", func() (bool, string) {
			return !vmRunning(m.ID), "qemu still running"
		})
		if err := c.StartMachine(ctx, "vm", m.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "vm", m.ID, api.StateStarted, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		expectAnswer(t, edge, "vm", "iad")

		// The app exits with 3 inside the guest; the host reports it.
		get(edge, "vm", "/exit")
		if err := c.WaitMachine(ctx, "vm", m.ID, api.StateStopped, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		got, err := c.GetMachine(ctx, "vm", m.ID)
		if err != nil || got.ExitCode == nil || *got.ExitCode != 3 {
			t.Fatalf("machine after /exit: %+v, %v; want stopped with exit code 3", got, err)
		}
		eventually(t, 20*time.Second, "perch logs has the app's and the guest's lines", func() (bool, string) {
			out, _ := perch(t, w, dir, "logs", "-n", "200")
			return strings.Contains(out, "exiting on request") && strings.Contains(out, "[console] perch-init:"), out
		})

		if err := c.DestroyMachine(ctx, "vm", m.ID, true); err != nil {
			t.Fatal(err)
		}
		stateDir := filepath.Join(region.StateDir, "microvm", "machines", m.ID)
		eventually(t, 30*time.Second, "the destroyed machine leaves nothing", func() (bool, string) {
			left := vmLeftovers(m.ID, stateDir)
			return len(left) == 0, strings.Join(left, ", ")
		})
	})

	t.Run("stop escalates when the app ignores SIGTERM", func(t *testing.T) {
		img, err := testimage.BuildGo(repoRoot(), "./internal/runtime/drivertest/testapp")
		if err != nil {
			t.Fatal(err)
		}
		ref := pushAny(t, w, "stubborn:v1", img)
		if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "stubborn"}); err != nil {
			t.Fatal(err)
		}
		m, err := c.CreateMachine(ctx, "stubborn", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
			Image: ref, Init: api.MachineInit{Cmd: []string{"serve"}}, Env: map[string]string{"IGNORE_SIGTERM": "1"},
			Guest:    api.Guest{Runtime: "microvm", CPUs: 1, MemoryMB: 256},
			Restart:  api.Restart{Policy: api.RestartNo},
			Services: []api.Service{{Protocol: "tcp", InternalPort: 8080}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "stubborn", m.ID, api.StateStarted, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "the app answers", func() (bool, string) {
			resp, err := httpClient.Get("http://" + m.PrivateIP + ":8080/")
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == 200, resp.Status
		})
		const timeout = 2 * time.Second
		begin := time.Now()
		if err := c.StopMachine(ctx, "stubborn", m.ID, &api.StopRequest{Signal: "SIGTERM", Timeout: timeout.String()}); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "stubborn", m.ID, api.StateStopped, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(begin); took < timeout {
			t.Errorf("stopped after %v, before the %v timeout, although the app ignores SIGTERM", took, timeout)
		}
		if vmRunning(m.ID) {
			t.Errorf("the VM of machine %s still runs after stop", m.ID)
		}
		if err := c.DestroyMachine(ctx, "stubborn", m.ID, true); err != nil {
			t.Fatal(err)
		}
	})
}

// vmRunning reports whether a qemu process runs machine id.
func vmRunning(id string) bool {
	return exec.Command("pgrep", "-f", "qemu-system-x86_64 -name perch-"+id).Run() == nil
}

// vmLeftovers lists what of machine id's VM remains on the host.
func vmLeftovers(id, stateDir string) []string {
	var left []string
	if vmRunning(id) {
		left = append(left, "qemu process")
	}
	for _, p := range []string{stateDir, "/sys/class/net/" + hostnet.TapName(id)} {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	return left
}

// pushAny pushes img to the world's registry as repo.
func pushAny(t *testing.T, w *devcluster.World, repo string, img v1.Image) string {
	t.Helper()
	info := w.Info()
	ref := info.Registry + "/" + repo
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: info.Token})); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// dumpMachine logs what explains a failed test of machine id: its status
// and events, and its VM's console and output.
func dumpMachine(t *testing.T, c *api.Client, app, id, dir string) {
	if m, err := c.GetMachine(context.Background(), app, id); err == nil {
		code := "none"
		if m.ExitCode != nil {
			code = fmt.Sprint(*m.ExitCode)
		}
		t.Logf("machine %s: state %s, exit code %s", id, m.State, code)
		for _, e := range m.Events {
			t.Logf("  event %s %s %s", e.Type, e.Status, e.Message)
		}
	}
	for _, f := range []string{"console.log", "stdout.log", "stderr.log"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
			t.Logf("%s:\n%s", f, b)
		}
	}
}
