package devcluster_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/volume"
)

// TestReleaseCommand: [deploy] release_command runs once per deploy with
// the new release's env and the app's secrets, before any machine is
// replaced; one that fails, or hangs past release_command_timeout, stops
// the deploy with its last log lines and leaves the app as it was, with
// no machine of it left behind.
func TestReleaseCommand(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "rel")
	base, err := os.ReadFile(filepath.Join(dir, "perch.toml"))
	if err != nil {
		t.Fatal(err)
	}
	release := func(deploy string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "perch.toml"), append(append([]byte{}, base...), "\n[deploy]\n"+deploy+"\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustPerch(t, w, dir, "secrets", "set", "DATABASE_URL=postgres://secret", "--stage")

	release(`release_command = "release ok"`)
	out := mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	if !strings.Contains(out, "Running release command in iad: release ok") || !strings.Contains(out, "Release command finished") {
		t.Errorf("deploy did not run the release command:\n%s", out)
	}
	eventually(t, 10*time.Second, "the release command's output in perch logs", func() (bool, string) {
		logs, _ := perch(t, w, dir, "logs")
		return strings.Contains(logs, "release: migrating (RELEASE_COMMAND=1, DATABASE_URL set)") && strings.Contains(logs, "release: done"), logs
	})
	good, err := liveMachines(ctx, w, "rel")
	if err != nil || len(good) != 1 || good[0].Config.Metadata["perch_release"] != "v1" {
		t.Fatalf("after the first deploy: %v %v; want one machine of v1 (the release command's destroyed)", ids(good), err)
	}

	unchanged := func(what string) {
		t.Helper()
		eventually(t, 15*time.Second, what+": the app as it was", func() (bool, string) {
			ms, err := liveMachines(ctx, w, "rel")
			return err == nil && len(ms) == 1 && ms[0].ID == good[0].ID && ms[0].InstanceID == good[0].InstanceID, strings.Join(ids(ms), " ")
		})
		expectAnswer(t, w.Info().Regions[0].EdgeAddr+":80", "rel", "iad")
	}

	release(`release_command = "release fail"`)
	out, err = perch(t, w, dir, "deploy", "--smoke-window", "1s")
	if err == nil {
		t.Fatal("a deploy whose release command failed succeeded")
	}
	for _, want := range []string{"migration 0042 failed: column already exists", "exit code 3", "stopped before any machine was replaced", "keeps running v1"} {
		if !strings.Contains(out, want) {
			t.Errorf("failed release command: output lacks %q:\n%s", want, out)
		}
	}
	unchanged("after a failed release command")

	release("release_command = \"release hang\"\nrelease_command_timeout = \"3s\"")
	start := time.Now()
	out, err = perch(t, w, dir, "deploy", "--smoke-window", "1s")
	if err == nil {
		t.Fatal("a deploy whose release command hung succeeded")
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the hung release command held the deploy %s; timeout 3s", took)
	}
	for _, want := range []string{"did not finish within 3s", "waiting for a lock that never comes", "keeps running v1"} {
		if !strings.Contains(out, want) {
			t.Errorf("hung release command: output lacks %q:\n%s", want, out)
		}
	}
	unchanged("after a release command that hung")
	rs := mustPerch(t, w, dir, "releases")
	if strings.Count(rs, "failed") < 2 {
		t.Errorf("perch releases does not show the two failed releases:\n%s", rs)
	}

	// Volumes, in the same world (docs/volumes.md): [[mounts]] makes the
	// deploy create the volume and replace the machine in place on it;
	// what the app writes there survives deploys, an agent killed with
	// SIGKILL, and the machine's destroy.
	volStart := time.Now()
	defer func() { t.Logf("the volume part took %s", time.Since(volStart).Round(time.Second)) }()
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	release("[[mounts]]\nsource = \"rel_data\"\ndestination = \"/data\"")
	out = mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	for _, want := range []string{"volume", "rel_data", "updating in place"} {
		if !strings.Contains(out, want) {
			t.Errorf("deploy with [[mounts]]: output lacks %q:\n%s", want, out)
		}
	}
	vols, err := w.Client().ListVolumes(ctx, "rel")
	if err != nil || len(vols) != 1 || vols[0].AttachedMachineID == nil || *vols[0].AttachedMachineID != good[0].ID {
		t.Fatalf("volumes after the deploy: %+v %v; want rel_data attached to %s (replaced in place)", vols, err, good[0].ID)
	}
	req, _ := http.NewRequest("PUT", "http://"+edge+"/file/data/row", strings.NewReader("row 1"))
	req.Host = "rel.perch.local"
	if resp, err := httpClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("writing to the volume: %v %v", resp, err)
	}
	reads := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, what+": the row is on the volume", func() (bool, string) {
			code, b, _, err := get(edge, "rel", "/file/data/row")
			return err == nil && code == 200 && strings.HasSuffix(b, "row 1"), fmt.Sprint(code, b, err)
		})
	}
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s") // a new release, in place again
	reads("after a second deploy")
	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	reads("after the agent was killed and restarted")
	ms, _ := liveMachines(ctx, w, "rel")
	if len(ms) != 1 {
		t.Fatalf("machines: %v", ids(ms))
	}
	mustPerch(t, w, dir, "machine", "destroy", "--force", ms[0].ID)
	eventually(t, 30*time.Second, "the machine gone, its volume kept and free", func() (bool, string) {
		vols, err := w.Client().ListVolumes(ctx, "rel")
		return err == nil && len(vols) == 1 && vols[0].AttachedMachineID == nil, fmt.Sprint(vols, err)
	})
	if l := volume.Loops(w.Info().Regions[0].StateDir); len(l) != 0 {
		t.Errorf("loop devices of a destroyed machine's volume: %v", l)
	}
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s") // a new machine, on the free volume
	reads("on a new machine")

	// A snapshot restored into a new volume (the old one destroyed) holds
	// the row for the next machine.
	vid := vols[0].ID
	out = mustPerch(t, w, dir, "volumes", "snapshots", "create", vid)
	snap := strings.Fields(strings.TrimPrefix(out, "Snapshot "))[0]
	if !strings.HasPrefix(snap, "vs_") {
		t.Fatalf("snapshots create said %q", out)
	}
	ms, _ = liveMachines(ctx, w, "rel")
	mustPerch(t, w, dir, "machine", "destroy", "--force", ms[0].ID)
	eventually(t, 30*time.Second, "the volume free again", func() (bool, string) {
		v, err := w.Client().GetVolume(ctx, "rel", vid)
		return err == nil && v.AttachedMachineID == nil, fmt.Sprint(v, err)
	})
	mustPerch(t, w, dir, "volumes", "destroy", vid, "--yes")
	mustPerch(t, w, dir, "volumes", "create", "rel_data", "--region", "iad", "--snapshot-id", snap)
	if out := mustPerch(t, w, dir, "volumes", "list"); strings.Contains(out, vid) || !strings.Contains(out, "rel_data") {
		t.Errorf("volumes list after the restore:\n%s", out)
	}
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	reads("on a volume restored from a snapshot")

	// Process groups and statics, in the same world, on an app of their
	// own (the volume part above leaves "rel" on its volume).
	pdir := t.TempDir()
	mustPerch(t, w, pdir, "launch", "--image", ref, "--regions", "iad", "--name", "procs")
	checkProcessGroupsAndStatics(t, w, pdir, "procs") // processes_test.go
}
