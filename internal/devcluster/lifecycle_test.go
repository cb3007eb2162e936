package devcluster_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// TestMachineLifecycle: restart policies, config updates, stop and start,
// and logs followed while they happen.
func TestMachineLifecycle(t *testing.T) {
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "life"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	follow := exec.Command(perchBin, "logs", "-f", "-a", "life")
	info := w.Info()
	follow.Env = append(follow.Environ(), "PERCH_API_URL="+info.APIURL, "PERCH_API_TOKEN="+info.Token, "HOME="+dir)
	logs := newLockedBuffer()
	follow.Stdout, follow.Stderr = logs, logs
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { follow.Process.Kill(); follow.Wait() })

	create := func(policy string, env map[string]string) api.Machine {
		t.Helper()
		m, err := c.CreateMachine(ctx, "life", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
			Image: ref, Env: env, Restart: api.Restart{Policy: policy},
			Services: []api.Service{{Protocol: "tcp", InternalPort: 8080}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "life", m.ID, api.StateStarted, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		return *m
	}
	exit := func(m api.Machine) {
		t.Helper()
		// "started" means the process runs, not that it listens yet: retry
		// while the connection is refused. The app exits mid-answer.
		eventually(t, 20*time.Second, fmt.Sprintf("machine %s takes /exit", m.ID), func() (bool, string) {
			resp, err := httpClient.Get("http://" + m.PrivateIP + ":8080/exit")
			if err == nil {
				resp.Body.Close()
			}
			return err == nil || !errors.Is(err, syscall.ECONNREFUSED), fmt.Sprint(err)
		})
	}
	answers := func(m api.Machine, path, want string) {
		t.Helper()
		eventually(t, 20*time.Second, fmt.Sprintf("machine %s answers %s with %q", m.ID, path, want), func() (bool, string) {
			resp, err := httpClient.Get("http://" + m.PrivateIP + ":8080" + path)
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			b := make([]byte, 256)
			n, _ := resp.Body.Read(b)
			return strings.Contains(string(b[:n]), want), string(b[:n])
		})
	}

	t.Run("policy no: an exit leaves the machine stopped with its code", func(t *testing.T) {
		m := create(api.RestartNo, nil)
		exit(m)
		if err := c.WaitMachine(ctx, "life", m.ID, api.StateStopped, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		got, _ := c.GetMachine(ctx, "life", m.ID)
		if got.ExitCode == nil || *got.ExitCode != 3 {
			t.Errorf("exit code %v, want 3", got.ExitCode)
		}
		// Start brings it back.
		if err := c.StartMachine(ctx, "life", m.ID); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "life", m.ID, api.StateStarted, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		answers(m, "/", "hello from iad")
	})

	t.Run("restart and signal reach the process", func(t *testing.T) {
		m := create(api.RestartNo, nil)
		answers(m, "/", "hello from iad")
		if err := c.RestartMachine(ctx, "life", m.ID, "SIGTERM", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "life", m.ID, api.StateStarted, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		got, _ := c.GetMachine(ctx, "life", m.ID)
		if got.InstanceID == m.InstanceID {
			t.Errorf("restart kept instance %s; want a new one", m.InstanceID)
		}
		answers(m, "/", "hello from iad")
		// hello exits on SIGTERM (as PID 1 it ignores signals it does not
		// handle); with restart policy no, it then stays stopped.
		if err := c.SignalMachine(ctx, "life", m.ID, "SIGTERM"); err != nil {
			t.Fatal(err)
		}
		err := c.WaitMachine(ctx, "life", m.ID, api.StateStopped, 20*time.Second)
		got, _ = c.GetMachine(ctx, "life", m.ID)
		if err != nil {
			t.Fatalf("%v; events: %+v", err, got.Events)
		}
		sent := false
		for _, e := range got.Events {
			sent = sent || (e.Type == "signal" && e.Message == "sent SIGTERM")
		}
		if !sent {
			t.Errorf("events do not show the signal sent: %+v", got.Events)
		}
	})

	t.Run("policy always: an exit restarts the machine", func(t *testing.T) {
		m := create(api.RestartAlways, nil)
		exit(m)
		eventually(t, 20*time.Second, "the machine restarted", func() (bool, string) {
			got, _ := c.GetMachine(ctx, "life", m.ID)
			for _, e := range got.Events {
				if e.Type == "exit" && strings.Contains(e.Message, "restarting") {
					return got.State == api.StateStarted, got.State
				}
			}
			return false, got.State
		})
		answers(m, "/", "hello from iad")
	})

	t.Run("update: the machine runs the new config", func(t *testing.T) {
		m := create(api.RestartOnFailure, map[string]string{"GREETING": "one"})
		answers(m, "/env/GREETING", "one")
		cfg := m.Config
		cfg.Env = map[string]string{"GREETING": "two"}
		up, err := c.UpdateMachine(ctx, "life", m.ID, api.CreateMachineRequest{Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "life", m.ID, api.StateStarted, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		answers(m, "/env/GREETING", "two")
		got, _ := c.GetMachine(ctx, "life", up.ID)
		if got.InstanceID == "" || got.PrivateIP != m.PrivateIP {
			t.Errorf("after update: %+v", got)
		}
	})

	t.Run("perch logs -f followed it all", func(t *testing.T) {
		eventually(t, 20*time.Second, "followed logs show the exits", func() (bool, string) {
			out := logs.String()
			return strings.Count(out, "exiting on request") >= 2 && strings.Contains(out, "iad"), out
		})
	})
}
