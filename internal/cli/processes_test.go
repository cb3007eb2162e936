package cli

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/perchhq/perch/internal/store"
)

// hostStandIn answers for a host that registered but runs no agent: it
// keeps the host up and reports each machine of app as its desired state
// asks (started and ready, or stopped), through the store as an agent
// does, so deploys and scale run against a real control plane in a
// second.
func hostStandIn(t *testing.T, st *store.Store, c *api.Client, app string) {
	t.Helper()
	hostStandInAs(t, st, c, app, api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 8, MemoryMB: 8192}, nil)
}

// hostStandInAs is hostStandIn for the host h registers as; seen, if
// set, is called with each machine spec it answers for. A release
// command's machine runs to completion: it is reported stopped, exit 0.
func hostStandInAs(t *testing.T, st *store.Store, c *api.Client, app string, h api.Host, seen func(store.MachineSpec)) *api.Host {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	host, err := c.RegisterHost(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			if n%6 == 0 {
				c.RegisterHost(ctx, *host)
			}
			specs, _ := store.List[store.MachineSpec](ctx, st.Machines, app+".*")
			for _, sp := range specs {
				if sp.Desired == store.DesireDestroyed {
					// The host destroys it; the control plane forgets it.
					store.Delete(ctx, st.Status, sp.Key())
					store.Delete(ctx, st.Machines, sp.Key())
					continue
				}
				if seen != nil {
					seen(sp)
				}
				state := map[string]string{store.DesireStarted: api.StateStarted, store.DesireStopped: api.StateStopped}[sp.Desired]
				var exit *int
				if sp.Config.Metadata[config.MetaProcessGroup] == releaseGroup {
					state, exit = api.StateStopped, new(int)
				}
				if state == "" {
					continue
				}
				cur, _, err := store.Get[store.MachineStatus](ctx, st.Status, sp.Key())
				if err == nil && cur.Generation == sp.Generation && cur.State == state {
					continue
				}
				store.Put(ctx, st.Status, sp.Key(), store.MachineStatus{
					ID: sp.ID, App: sp.App, HostID: sp.HostID, State: state, Generation: sp.Generation,
					Ready: state == api.StateStarted, ExitCode: exit, UpdatedAt: time.Now(),
				})
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return host
}

// groupsOf counts an app's live machines by process group.
func groupsOf(t *testing.T, c *api.Client, app string) map[string][]api.Machine {
	t.Helper()
	ms, err := c.ListMachines(context.Background(), app, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]api.Machine{}
	for _, m := range live(ms) {
		out[processGroup(m)] = append(out[processGroup(m)], m)
	}
	return out
}

const procsToml = `app = "procs"
primary_region = "iad"

[build]
  image = "127.0.0.1:1/procs:1"

[processes]
  web = "bin/web --port 8080"
  worker = "bin/worker --queue default"

[http_service]
  internal_port = 8080
  processes = ["web"]

[[vm]]
  size = "shared-cpu-2x"
  processes = ["worker"]

[[statics]]
  guest_path = "/srv/public"
  url_prefix = "/static"
`

// A deploy of an app with two process groups makes a machine of each with
// its own command, size and services (the worker none, so no edge routes
// to it); perch scale count web=2 worker=1 scales each group; a deploy
// keeps each group's count; status shows the groups; a group removed from
// [processes] loses its machines on the next deploy.
func TestProcessGroupsDeployAndScale(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	url, token := srv.URL(), srv.AdminToken()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	c := api.NewClient(url, token)
	ctx := context.Background()
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "procs"}); err != nil {
		t.Fatal(err)
	}
	hostStandIn(t, srv.Store(), c, "procs")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(procsToml), 0o644); err != nil {
		t.Fatal(err)
	}
	deploy := func(t *testing.T) string {
		t.Helper()
		out, err := run(t, dir, "", "deploy", "--smoke-window", "0", "--wait-timeout", "10s")
		if err != nil {
			t.Fatalf("deploy: %v\n%s", err, out)
		}
		return out
	}

	out := deploy(t)
	gs := groupsOf(t, c, "procs")
	if len(gs["web"]) != 1 || len(gs["worker"]) != 1 || len(gs) != 2 {
		t.Fatalf("after the first deploy: %d web, %d worker machines, groups %d; want 1 and 1\n%s", len(gs["web"]), len(gs["worker"]), len(gs), out)
	}
	web, worker := gs["web"][0].Config, gs["worker"][0].Config
	if !slices.Equal(web.Init.Cmd, []string{"bin/web", "--port", "8080"}) || !slices.Equal(worker.Init.Cmd, []string{"bin/worker", "--queue", "default"}) {
		t.Errorf("commands: web %q, worker %q", web.Init.Cmd, worker.Init.Cmd)
	}
	if web.Env[config.EnvProcessGroup] != "web" || worker.Env[config.EnvProcessGroup] != "worker" || worker.Metadata[config.MetaProcessGroup] != "worker" {
		t.Errorf("group env/metadata: web %v, worker %v %v", web.Env, worker.Env, worker.Metadata)
	}
	if len(web.Services) != 1 || len(worker.Services) != 0 {
		t.Errorf("services: web %d, worker %d; want 1 and 0 (only web is named by [http_service])", len(web.Services), len(worker.Services))
	}
	if len(web.Statics) != 1 || len(worker.Statics) != 0 {
		t.Errorf("statics: web %v, worker %v", web.Statics, worker.Statics)
	}
	if web.Guest.MemoryMB != 256 || worker.Guest.MemoryMB != 512 || worker.Guest.CPUs != 2 {
		t.Errorf("sizes: web %+v, worker %+v", web.Guest, worker.Guest)
	}

	t.Run("plain count refused for several groups", func(t *testing.T) {
		_, err := run(t, dir, "", "scale", "count", "3")
		wantErr(t, err, "process groups web, worker", "web=3")
		_, err = run(t, dir, "", "scale", "count", "db=1")
		wantErr(t, err, `no process group "db"`, "web, worker")
	})

	t.Run("scale count web=2 worker=1", func(t *testing.T) {
		out, err := run(t, dir, "", "scale", "count", "web=2", "worker=1", "--region", "iad")
		if err != nil {
			t.Fatalf("scale: %v\n%s", err, out)
		}
		for _, want := range []string{"iad web: now 2 machines", "iad worker: already 1 machine"} {
			if !strings.Contains(out, want) {
				t.Errorf("scale output lacks %q:\n%s", want, out)
			}
		}
		gs := groupsOf(t, c, "procs")
		if len(gs["web"]) != 2 || len(gs["worker"]) != 1 {
			t.Fatalf("after scale: %d web, %d worker", len(gs["web"]), len(gs["worker"]))
		}
		for _, m := range gs["web"] {
			if len(m.Config.Services) != 1 || m.Config.Env[config.EnvProcessGroup] != "web" {
				t.Errorf("scaled web machine %s has config %+v", m.ID, m.Config)
			}
		}
	})

	t.Run("deploy keeps each group's count", func(t *testing.T) {
		before := groupsOf(t, c, "procs")
		out := deploy(t)
		gs := groupsOf(t, c, "procs")
		if len(gs["web"]) != 2 || len(gs["worker"]) != 1 {
			t.Fatalf("after a deploy: %d web, %d worker; want 2 and 1\n%s", len(gs["web"]), len(gs["worker"]), out)
		}
		for _, m := range append(gs["web"], gs["worker"]...) {
			for _, old := range append(before["web"], before["worker"]...) {
				if m.ID == old.ID {
					t.Errorf("machine %s was not replaced by the deploy", m.ID)
				}
			}
		}
		status, err := run(t, dir, "", "status")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Process group web (2 machines", "Process group worker (1 machine"} {
			if !strings.Contains(status, want) {
				t.Errorf("status lacks %q:\n%s", want, status)
			}
		}
	})

	t.Run("a group removed from [processes] is destroyed", func(t *testing.T) {
		toml := strings.Replace(procsToml, "  worker = \"bin/worker --queue default\"\n", "", 1)
		toml = strings.Replace(toml, "[[vm]]\n  size = \"shared-cpu-2x\"\n  processes = [\"worker\"]\n", "", 1)
		if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
		out := deploy(t)
		if !strings.Contains(out, "Process group worker is no longer in [processes]: its 1 machine will be destroyed") {
			t.Errorf("deploy did not say it removes the worker group:\n%s", out)
		}
		gs := groupsOf(t, c, "procs")
		if len(gs["web"]) != 2 || len(gs["worker"]) != 0 {
			t.Errorf("after removing worker: %d web, %d worker; want 2 and 0\n%s", len(gs["web"]), len(gs["worker"]), out)
		}
	})
}
