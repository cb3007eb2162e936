package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// volumeStandIn makes host h answer its volume requests as its agent does
// (agent.VolumeOp: real ext4 images in a directory of the test's).
func volumeStandIn(t *testing.T, st *store.Store, h *api.Host) {
	t.Helper()
	dir := t.TempDir()
	sub, err := st.Conn().Subscribe(store.VolumeSubject(h.ID), func(m *nats.Msg) {
		var req store.VolumeRequest
		_ = json.Unmarshal(m.Data, &req)
		b, _ := json.Marshal(agent.VolumeOp(context.Background(), st.VolumeMoves, dir, req))
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
}

const mountsToml = `app = "vols"
primary_region = "iad"

[build]
  image = "127.0.0.1:1/vols:1"

[processes]
  web = "bin/web"
  db = "bin/db"

[http_service]
  internal_port = 8080
  processes = ["web"]

[[mounts]]
  source = "pg_data"
  destination = "/var/lib/pg"
  initial_size = "2gb"
  processes = ["db"]
`

// [[mounts]] processes = ["db"]: perch deploy gives the db machine its
// volume and the web machine none; the next deploy keeps the db machine
// on its volume, in place, and rolls web by the strategy (a new machine);
// perch scale count db=2 gives the new db machine a volume of its own of
// the same size, and web=2 none.
func TestMountsOfOneProcessGroup(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	url, token := srv.URL(), srv.AdminToken()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	c := api.NewClient(url, token)
	ctx := context.Background()
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "vols"}); err != nil {
		t.Fatal(err)
	}
	h := hostStandInAs(t, srv.Store(), c, "vols", api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 8, MemoryMB: 8192, Disk: &api.HostDisk{FreeBytes: 100 << 30}}, nil)
	volumeStandIn(t, srv.Store(), h)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(mountsToml), 0o644); err != nil {
		t.Fatal(err)
	}
	deploy := func(t *testing.T) string {
		t.Helper()
		out, err := run(t, dir, "", "deploy", "--smoke-window", "0", "--wait-timeout", "20s")
		if err != nil {
			t.Fatalf("deploy: %v\n%s", err, out)
		}
		return out
	}
	volumes := func(t *testing.T) []api.Volume {
		t.Helper()
		vs, err := c.ListVolumes(ctx, "vols")
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}

	out := deploy(t)
	if !strings.Contains(out, "strategy in place for machines on volumes, rolling for the others") {
		t.Errorf("deploy does not say how each kind of machine is rolled:\n%s", out)
	}
	gs := groupsOf(t, c, "vols")
	if len(gs["web"]) != 1 || len(gs["db"]) != 1 {
		t.Fatalf("after the first deploy: %d web, %d db machines; want 1 and 1\n%s", len(gs["web"]), len(gs["db"]), out)
	}
	db, web := gs["db"][0], gs["web"][0]
	if len(web.Config.Mounts) != 0 {
		t.Errorf("web machine mounts %+v; [[mounts]] names only db", web.Config.Mounts)
	}
	if len(db.Config.Mounts) != 1 || db.Config.Mounts[0].Volume == "" || db.Config.Mounts[0].Path != "/var/lib/pg" {
		t.Fatalf("db machine mounts %+v, want its own pg_data volume at /var/lib/pg\n%s", db.Config.Mounts, out)
	}
	vs := volumes(t)
	if len(vs) != 1 || vs[0].Name != "pg_data" || vs[0].SizeGB != 2 || vs[0].AttachedMachineID == nil || *vs[0].AttachedMachineID != db.ID {
		t.Fatalf("volumes after the first deploy: %+v; want one pg_data of 2 GB attached to %s", vs, db.ID)
	}
	dbVol := db.Config.Mounts[0].Volume

	t.Run("redeploy: db in place, web rolled", func(t *testing.T) {
		out := deploy(t)
		gs := groupsOf(t, c, "vols")
		if len(gs["db"]) != 1 || gs["db"][0].ID != db.ID || len(gs["db"][0].Config.Mounts) != 1 || gs["db"][0].Config.Mounts[0].Volume != dbVol {
			t.Errorf("db after redeploy: %+v; want machine %s kept on volume %s\n%s", gs["db"], db.ID, dbVol, out)
		}
		if len(gs["web"]) != 1 || gs["web"][0].ID == web.ID || len(gs["web"][0].Config.Mounts) != 0 {
			t.Errorf("web after redeploy: %+v; want a new machine (rolled) with no mount, replacing %s\n%s", gs["web"], web.ID, out)
		}
		if !strings.Contains(out, "updating in place on volume "+dbVol) {
			t.Errorf("deploy did not say db is updated in place:\n%s", out)
		}
		if n := len(volumes(t)); n != 1 {
			t.Errorf("%d volumes after redeploy, want 1", n)
		}
	})

	t.Run("scale count db=2 web=2", func(t *testing.T) {
		out, err := run(t, dir, "", "scale", "count", "db=2", "web=2")
		if err != nil {
			t.Fatalf("scale: %v\n%s", err, out)
		}
		gs := groupsOf(t, c, "vols")
		if len(gs["db"]) != 2 || len(gs["web"]) != 2 {
			t.Fatalf("after scale: %d db, %d web\n%s", len(gs["db"]), len(gs["web"]), out)
		}
		for _, m := range gs["web"] {
			if len(m.Config.Mounts) != 0 {
				t.Errorf("web machine %s mounts %+v", m.ID, m.Config.Mounts)
			}
		}
		seen := map[string]bool{}
		for _, m := range gs["db"] {
			if len(m.Config.Mounts) != 1 || m.Config.Mounts[0].Volume == "" || seen[m.Config.Mounts[0].Volume] {
				t.Errorf("db machine %s mounts %+v; want a volume of its own", m.ID, m.Config.Mounts)
				continue
			}
			seen[m.Config.Mounts[0].Volume] = true
		}
		vs := volumes(t)
		if len(vs) != 2 {
			t.Fatalf("%d volumes after scale, want 2: %+v", len(vs), vs)
		}
		for _, v := range vs {
			if v.Name != "pg_data" || v.SizeGB != 2 || v.Region != "iad" {
				t.Errorf("volume %+v; want pg_data, 2 GB, iad", v)
			}
		}
	})
}
