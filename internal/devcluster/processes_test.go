package devcluster_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/volume"
)

// checkProcessGroupsAndStatics deploys app (already running in world w,
// region iad) as two process groups, web ("app", with the HTTP service
// and [[statics]]) and worker (no service), from an image with a
// /srv/public layer: each group gets a machine; the edge routes only to
// the web machine; a static file is answered by the edge with Range.
// It runs in an existing world (TestReleaseCommand's): a world costs ~30 s.
func checkProcessGroupsAndStatics(t *testing.T, w *devcluster.World, dir, app string) {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("process groups and statics: %s", time.Since(start).Round(time.Millisecond)) }()
	ctx := context.Background()
	info := w.Info()
	ref := pushWithStatics(t, info, "statics:v1", "srv/public/hello.txt", "hello, static world\n")
	toml := fmt.Sprintf(`app = %q
primary_region = "iad"

[build]
  image = %q

[processes]
  app = "serve"
  worker = "work"

[http_service]
  internal_port = 8080
  processes = ["app"]

[[statics]]
  guest_path = "/srv/public"
  url_prefix = "/static"
`, app, ref)
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	if !strings.Contains(out, "Process groups: app, worker") {
		t.Errorf("deploy did not name the process groups:\n%s", out)
	}
	ms, err := liveMachines(ctx, w, app)
	if err != nil {
		t.Fatal(err)
	}
	byGroup := map[string][]string{}
	for _, m := range ms {
		g := m.Config.Metadata["fly_process_group"]
		byGroup[g] = append(byGroup[g], m.ID)
	}
	if len(byGroup["app"]) != 1 || len(byGroup["worker"]) != 1 || len(ms) != 2 {
		t.Fatalf("machines by group: %v, want one app and one worker", byGroup)
	}
	edge := info.Regions[0].EdgeAddr + ":80"
	// The worker listens on 8080 too, but has no service: never routed.
	for range 10 {
		body := expectAnswer(t, edge, app, "iad")
		if !strings.Contains(body, "machine "+byGroup["app"][0]) {
			t.Fatalf("the edge answered from a machine that is not the web group's: %q (web %s, worker %s)", body, byGroup["app"][0], byGroup["worker"][0])
		}
	}
	req, _ := http.NewRequest("GET", "http://"+edge+"/static/hello.txt", nil)
	req.Host = app + ".perch.local"
	req.Header.Set("Range", "bytes=7-12")
	res, err := httpClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusPartialContent || string(body) != "static" || res.Header.Get("ETag") == "" {
		t.Errorf("GET /static/hello.txt with Range: %d %q (ETag %q), want 206 \"static\"", res.StatusCode, body, res.Header.Get("ETag"))
	}
	// A guest_path behind a symlink leading out of the image fails the
	// deploy with the reason, and the app keeps its release.
	before, _ := liveMachines(ctx, w, app)
	bad := strings.Replace(toml, `guest_path = "/srv/public"`, `guest_path = "/srv/escape/etc"`, 1)
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = perch(t, w, dir, "deploy", "--smoke-window", "1s")
	if err == nil || !strings.Contains(out+err.Error(), "[[statics]] guest_path /srv/escape/etc: symlink /srv/escape -> ../.. points outside the image") {
		t.Errorf("deploy with a guest_path outside the image: %v\n%s", err, out)
	}
	eventually(t, 15*time.Second, "the app as it was after the refused statics", func() (bool, string) {
		ms, err := liveMachines(ctx, w, app)
		return err == nil && slices.Equal(slices.Sorted(slices.Values(ids(ms))), slices.Sorted(slices.Values(ids(before)))), strings.Join(ids(ms), " ")
	})

	// The old release's machine is gone once its host destroyed it.
	eventually(t, 15*time.Second, "perch status grouped by process group", func() (bool, string) {
		status, _ := perch(t, w, dir, "status")
		return strings.Contains(status, "Process group app (1 machine)") && strings.Contains(status, "Process group worker (1 machine)"), status
	})
	checkWholeAppOnVolume(t, w, dir, app, toml, byGroup["app"][0])
}

// checkWholeAppOnVolume is issue 14's end-to-end case, on app (two
// process groups, web "app" with statics and worker, as
// checkProcessGroupsAndStatics deployed it from toml; web is its web
// machine): a secret both groups read; a volume for the web group; a
// release command that writes a schema version to that volume (through
// the web machine that mounts it: a release command's machine mounts no
// volume, as on Fly, docs/volumes.md); the web process reads it, the
// edge serves the statics with Range; then the host's agent is killed
// with SIGKILL and started again, the app's machines (all on that host)
// are destroyed and made again by a deploy, and the volume still holds
// the schema; a snapshot of it restored into a new volume gives a new
// machine the same data.
func checkWholeAppOnVolume(t *testing.T, w *devcluster.World, dir, app, toml, web string) {
	t.Helper()
	start := time.Now()
	defer func() { t.Logf("the whole app on a volume: %s", time.Since(start).Round(time.Millisecond)) }()
	ctx := context.Background()
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	const secret = "postgres://app:s3cr3t-both-groups@db/app"
	deploy := func(extra string) string {
		t.Helper()
		writeFile(t, filepath.Join(dir, "perch.toml"), toml+extra)
		return mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	}
	mounts := "\n[[mounts]]\n  source = \"schema_data\"\n  destination = \"/data\"\n  processes = [\"app\"]\n"
	mustPerch(t, w, dir, "secrets", "set", "DATABASE_URL="+secret, "--stage")
	out := deploy(mounts)
	if !strings.Contains(out, "updating in place on volume") {
		t.Errorf("deploy with [[mounts]] for the web group: the web machine not updated in place:\n%s", out)
	}
	// The release command reaches the web machine by its 6PN name.
	out = deploy(mounts + fmt.Sprintf("\n[env]\n  SCHEMA_URL = \"http://%s.vm.%s.internal:8080/file/data/schema\"\n\n[deploy]\n  release_command = \"release migrate 7\"\n", web, app))
	if !strings.Contains(out, "Release command finished") {
		t.Errorf("deploy did not run the release command:\n%s", out)
	}
	eventually(t, 15*time.Second, "the release command's output in perch logs", func() (bool, string) {
		logs, _ := perch(t, w, dir, "logs")
		return strings.Contains(logs, "release: migrating (RELEASE_COMMAND=1, DATABASE_URL set)") && strings.Contains(logs, "release: schema 7 written"), logs
	})

	// holds checks what a user sees: the web machine reads the schema
	// from its volume and the secret, the worker (asked over 6PN through
	// the web machine) the secret, and the edge serves a static with Range.
	holds := func(what string) {
		t.Helper()
		ms, err := liveMachines(ctx, w, app)
		if err != nil {
			t.Fatal(err)
		}
		var worker string
		for _, m := range ms {
			if m.Config.Metadata["fly_process_group"] == "worker" {
				worker = m.ID
			}
		}
		if worker == "" {
			t.Fatalf("%s: no worker machine among %v", what, ids(ms))
		}
		eventually(t, 30*time.Second, what+": the schema on the web machine's volume", func() (bool, string) {
			code, b, _, err := get(edge, app, "/file/data/schema")
			return err == nil && code == 200 && strings.HasSuffix(b, " schema 7"), fmt.Sprint(code, b, err)
		})
		for _, p := range []string{"/env/DATABASE_URL", "/fetch?url=http://" + worker + ".vm." + app + ".internal:8080/env/DATABASE_URL"} {
			eventually(t, 30*time.Second, what+": the secret from "+p, func() (bool, string) {
				code, b, _, err := get(edge, app, p)
				return err == nil && code == 200 && strings.TrimSpace(b) == secret, fmt.Sprint(code, b, err)
			})
		}
		req, _ := http.NewRequest("GET", "http://"+edge+"/static/hello.txt", nil)
		req.Host = app + ".perch.local"
		req.Header.Set("Range", "bytes=0-4")
		res, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusPartialContent || string(body) != "hello" {
			t.Errorf("%s: GET /static/hello.txt bytes=0-4: %d %q, want 206 \"hello\"", what, res.StatusCode, body)
		}
	}
	holds("after the release command")
	vols, err := w.Client().ListVolumes(ctx, app)
	if err != nil || len(vols) != 1 || vols[0].AttachedMachineID == nil || *vols[0].AttachedMachineID != web {
		t.Fatalf("volumes: %+v %v; want schema_data on the web machine %s", vols, err, web)
	}
	vid := vols[0].ID

	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	holds("after the agent was killed and started again")

	// The host loses power: agent, shims and machine processes killed
	// with SIGKILL (no exit recorded), the volume's mount gone. The agent,
	// started again, makes the machines run again on their volume.
	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	powerOffMachines(t, w.Info(), "iad")
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	holds("after the host's machines were killed and made to run again")

	// The web machine's shim and process killed, and the machine stopped,
	// while its agent is down: the agent, back, lets go of the volume (no
	// loop device left on its image), and the machine started again reads
	// the schema from the one filesystem on it.
	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	killMachines(t, w.Info(), "iad", web)
	mustPerch(t, w, dir, "machine", "stop", web)
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the stopped web machine's volume off every loop device", func() (bool, string) {
		m, err := w.Client().GetMachine(ctx, app, web)
		var on []string
		for _, l := range volume.Loops(w.Info().Regions[0].StateDir) {
			if strings.Contains(l, vid) {
				on = append(on, l)
			}
		}
		return err == nil && m.State == api.StateStopped && len(on) == 0, fmt.Sprint(m.State, err, on)
	})
	mustPerch(t, w, dir, "machine", "start", web)
	holds("after a stop of the machine whose shim was killed, and a start")

	// Every machine of the app (all on the one host) destroyed, then made
	// again by a deploy (without the release command: its target is gone).
	before, _ := liveMachines(ctx, w, app)
	for _, m := range before {
		mustPerch(t, w, dir, "machine", "destroy", "--force", m.ID)
	}
	eventually(t, 30*time.Second, "the machines gone, the volume kept and free", func() (bool, string) {
		ms, _ := liveMachines(ctx, w, app)
		v, err := w.Client().GetVolume(ctx, app, vid)
		return len(ms) == 0 && err == nil && v.AttachedMachineID == nil, fmt.Sprint(ids(ms), v, err)
	})
	for _, l := range volume.Loops(w.Info().Regions[0].StateDir) {
		if strings.Contains(l, vid) { // other apps' machines run on
			t.Errorf("the destroyed web machine's volume is still on a loop device: %s", l)
		}
	}
	deploy(mounts)
	after, _ := liveMachines(ctx, w, app)
	if len(after) != 2 || slices.ContainsFunc(after, func(m api.Machine) bool { return slices.Contains(ids(before), m.ID) }) {
		t.Fatalf("machines after the destroy and deploy: %v (before %v); want two new ones", ids(after), ids(before))
	}
	holds("on machines made again")

	// A snapshot restored into a new volume; a new machine on it reads the schema.
	out = mustPerch(t, w, dir, "volumes", "snapshots", "create", vid)
	snap := strings.Fields(strings.TrimPrefix(out, "Snapshot "))[0]
	if !strings.HasPrefix(snap, "vs_") {
		t.Fatalf("snapshots create said %q", out)
	}
	mustPerch(t, w, dir, "volumes", "create", "schema_copy", "--region", "iad", "--snapshot-id", snap)
	vols, _ = w.Client().ListVolumes(ctx, app)
	var restored string
	for _, v := range vols {
		if v.Name == "schema_copy" {
			restored = v.ID
		}
	}
	if restored == "" {
		t.Fatalf("no volume schema_copy restored from %s: %+v", snap, vols)
	}
	img := after[0].Config.Image
	m, err := w.Client().CreateMachine(ctx, app, api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
		Image: img, Mounts: []api.Mount{{Volume: restored, Path: "/restored"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Client().WaitMachine(ctx, app, m.ID, api.StateStarted, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the schema on the restored volume, read by a new machine", func() (bool, string) {
		code, b, _, err := get(edge, app, "/fetch?url=http://"+m.ID+".vm."+app+".internal:8080/file/restored/schema")
		return err == nil && code == 200 && strings.HasSuffix(b, " schema 7"), fmt.Sprint(code, b, err)
	})
}

// pushWithStatics pushes the sample image with one more layer holding a
// file at path, and /srv/escape, a symlink out of the image.
func pushWithStatics(t *testing.T, info devcluster.Info, repo, path, content string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, d := range []string{"srv/", "srv/public/"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime})
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "srv/escape", Linkname: "../..", ModTime: mtime})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path, Mode: 0o644, Size: int64(len(content)), ModTime: mtime})
	tw.Write([]byte(content))
	tw.Close()
	img, err := mutate.AppendLayers(buildSample(t), static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
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

// powerOffMachines does to region's machines what a host's power loss
// does, its agent already killed: every machine's shim and process
// killed with SIGKILL (so no exit is recorded) and the volumes' mounts
// on the host gone. (Not the rest of a reboot: network namespaces,
// rootfs mounts and /run stay.)
func powerOffMachines(t *testing.T, info devcluster.Info, region string) {
	t.Helper()
	var state string
	for _, r := range info.Regions {
		if r.Code == region {
			state = r.StateDir
		}
	}
	killMachines(t, info, region)
	// A reboot takes every mount with it: the machines' idmapped binds
	// of their volumes (which a killed shim leaves), then the volumes.
	binds, _ := filepath.Glob(filepath.Join(state, "runc", "machines", "*", "volumes", "*"))
	for _, b := range binds {
		_ = syscall.Unmount(b, syscall.MNT_DETACH)
	}
	vols, _ := os.ReadDir(filepath.Join(state, "volumes"))
	for _, v := range vols {
		if err := volume.Unmount(agent.VolumeMountPoint(state, v.Name())); err != nil {
			t.Fatalf("unmount volume %s: %v", v.Name(), err)
		}
	}
	t.Logf("host %s powered off: %d volumes unmounted", region, len(vols))
}

// killMachines kills with SIGKILL the shim and the process of region's
// running machines (only those of ids, if given), as the kernel's OOM
// killer or an operator might: no exit is recorded.
func killMachines(t *testing.T, info devcluster.Info, region string, only ...string) {
	t.Helper()
	var state string
	for _, r := range info.Regions {
		if r.Code == region {
			state = r.StateDir
		}
	}
	root := filepath.Join(state, "runc", "runc")
	// running lists the running machines. runc list failed once here
	// (exit status 1, right after the machines were started again), so a
	// failure is asked again for a while.
	running := func() []string {
		var ids []string
		eventually(t, 15*time.Second, "runc list in "+region, func() (bool, string) {
			out, err := exec.Command("runc", "--root", root, "list", "-f", "json").CombinedOutput()
			if err != nil {
				return false, fmt.Sprintf("%v: %s", err, out)
			}
			var cs []struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			}
			if err := json.Unmarshal(out, &cs); err != nil {
				return false, fmt.Sprintf("%v: %s", err, out)
			}
			ids = nil
			for _, c := range cs {
				if c.Status == "running" {
					ids = append(ids, c.ID)
				}
			}
			return true, ""
		})
		return ids
	}
	var killed []string
	for _, id := range running() {
		if len(only) == 0 || slices.Contains(only, id) {
			killed = append(killed, id)
		}
	}
	if len(killed) == 0 {
		t.Fatalf("no machine of %v runs in %s", only, region)
	}
	for _, id := range killed {
		var sh struct {
			Pid int `json:"pid"`
		}
		if b, err := os.ReadFile(filepath.Join(state, "runc", "machines", id, "shim.json")); err == nil && json.Unmarshal(b, &sh) == nil && sh.Pid > 0 {
			_ = syscall.Kill(sh.Pid, syscall.SIGKILL)
		}
		if out, err := exec.Command("runc", "--root", root, "kill", id, "KILL").CombinedOutput(); err != nil {
			t.Logf("runc kill %s: %v %s", id, err, out)
		}
	}
	eventually(t, 30*time.Second, "the killed machines' processes gone in "+region, func() (bool, string) {
		left := slices.DeleteFunc(running(), func(id string) bool { return !slices.Contains(killed, id) })
		return len(left) == 0, strings.Join(left, " ")
	})
	t.Logf("machines %v in %s killed with their shims", killed, region)
}
