package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/build"
	"github.com/perchhq/perch/internal/devcluster"
)

// TestDeployAcrossRegions is the foundation's promise end to end, with the
// real parts: embedded NATS, the registry, runc and agent processes.
func TestDeployAcrossRegions(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{})
	deployFlow(t, w)
	buildDeployFlow(t, w)
}

// buildDeployFlow: perch deploy in a directory with a Dockerfile and no
// image builds it with BuildKit (a local buildkitd), pushes it to the
// world's registry and deploys it to every region; a one-file change
// re-runs only the steps after it and the new content is served.
func buildDeployFlow(t *testing.T, w *devcluster.World) {
	t0 := time.Now()
	defer func() { t.Logf("build, deploy, rebuild and redeploy took %v", time.Since(t0).Round(time.Millisecond)) }()
	bkDir := filepath.Join(t.TempDir(), "bk")
	// Started here (the CLI reuses it) so the test stops it at the end.
	d, err := build.Start(context.Background(), bkDir, nil, nil)
	if err != nil {
		t.Fatalf("start buildkitd (scripts/deps.sh installs it): %v", err)
	}
	t.Cleanup(d.Stop)
	info := w.Info()
	base := pushImage(t, w, "hello:base")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", base, "--regions", "iad,ams,sin", "--name", "built")
	toml, err := os.ReadFile(filepath.Join(dir, "perch.toml"))
	if err != nil {
		t.Fatal(err)
	}
	// No image: the Dockerfile next to perch.toml is the app.
	toml = []byte(strings.Replace(string(toml), "image = '"+base+"'", "", 1))
	write := func(name, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("perch.toml", string(toml)+"\n[build.args]\n  GREETING = 'built by perch'\n")
	write("Dockerfile", "FROM "+base+" AS build\n"+
		"FROM "+base+"\nARG GREETING\nENV GREETING=$GREETING\nWORKDIR /srv\n"+
		"COPY --from=build /app /srv/app-from-build\nCOPY msg.txt /srv/msg.txt\nUSER nobody\nEXPOSE 8080\n")
	write(".dockerignore", "secret.txt\n")
	write("secret.txt", "not in the image")
	write("msg.txt", "v1")
	env := []string{"PERCH_BUILDKIT_DIR=" + bkDir}
	served := func(path, want string) {
		t.Helper()
		for _, r := range info.Regions {
			eventually(t, 30*time.Second, fmt.Sprintf("%s edge serves %s of the built image", r.Code, path), func() (bool, string) {
				code, b, _, err := get(r.EdgeAddr+":80", "built", path)
				return err == nil && code == 200 && strings.TrimSpace(b) == want, fmt.Sprintf("%d %q %v", code, b, err)
			})
		}
	}
	out, err := perchEnv(t, w, dir, env, "deploy", "--smoke-window", "1s")
	if err != nil {
		t.Fatalf("perch deploy (build): %v", err)
	}
	if !strings.Contains(out, "Built and pushed "+info.Registry+"/built:deployment-") {
		t.Errorf("deploy output does not say it built and pushed built:deployment-<id>")
	}
	served("/file/srv/msg.txt", "0644 v1")
	served("/env/GREETING", "built by perch")
	if code, _, _, _ := get(info.Regions[0].EdgeAddr+":80", "built", "/file/srv/secret.txt"); code != 404 {
		t.Errorf("/srv/secret.txt answered %d: .dockerignore was not honoured", code)
	}

	write("msg.txt", "v2")
	out, err = perchEnv(t, w, dir, env, "deploy", "--smoke-window", "1s")
	if err != nil {
		t.Fatalf("perch deploy (rebuild): %v", err)
	}
	if !strings.Contains(out, "=> CACHED [stage-1 3/4] COPY --from=build /app /srv/app-from-build") || strings.Contains(out, "CACHED [stage-1 4/4] COPY msg.txt") {
		t.Errorf("rebuild with msg.txt changed: want COPY --from cached and COPY msg.txt re-run")
	}
	served("/file/srv/msg.txt", "0644 v2")

	// A failing RUN (this base has no shell) ends the deploy, non-zero,
	// naming the step; a context over --build-context-max is refused before
	// upload. The app keeps serving v2.
	write("Dockerfile", "FROM "+base+"\nCOPY msg.txt /srv/msg.txt\nRUN echo never\n")
	out, err = perchEnv(t, w, dir, env, "deploy", "--smoke-window", "1s")
	if err == nil || !strings.Contains(out, "build step [3/3] RUN echo never failed") {
		t.Errorf("deploy of a failing RUN: err %v, want a non-zero exit naming the step", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = perchEnv(t, w, dir, env, "deploy", "--build-context-max", "1")
	if err == nil || !strings.Contains(out, "over the limit of 1.0 MB") || strings.Contains(out, "Building") {
		t.Errorf("deploy of a 2 MB context with --build-context-max 1: err %v, want it refused before the build", err)
	}
	served("/file/srv/msg.txt", "0644 v2")
}

// TestDeployWithExternalNATS runs the same flow with the state in a
// nats-server process instead of the embedded one.
func TestDeployWithExternalNATS(t *testing.T) {
	t.Parallel() // see TestMain
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		t.Fatalf("nats-server not installed (the test command installs it): %v", err)
	}
	port := freePort(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "-js", "-sd", filepath.Join(dir, "js"), "-a", "127.0.0.1", "-p", strconv.Itoa(port), "--auth", "s3cret")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(t, 10*time.Second, "nats-server listens", func() (bool, string) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil, fmt.Sprint(err)
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	w := startWorld(t, devcluster.Options{NATSURL: url, NATSToken: "s3cret"})
	if _, err := os.Stat(filepath.Join(w.Info().Dir, "server", "nats")); err == nil {
		t.Fatalf("the embedded NATS ran although --nats was given")
	}
	deployFlow(t, w)
}

func deployFlow(t *testing.T, w *devcluster.World) {
	ctx := context.Background()
	info := w.Info()
	edges := map[string]string{}
	for _, r := range info.Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
	}
	ref := pushImage(t, w, "hello:v1")

	// The three commands.
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad,ams,sin", "--name", "hello")
	mustPerch(t, w, dir, "deploy")

	// Each region's edge answers from its own region.
	for _, r := range []string{"iad", "ams", "sin"} {
		body := expectAnswer(t, edges[r], "hello", r)
		if !strings.Contains(body, "edge "+r) {
			t.Errorf("%s edge: app saw Perch-Region other than %s: %q", r, r, body)
		}
	}
	c := w.Client()
	machines, err := c.ListMachines(ctx, "hello", "")
	if err != nil {
		t.Fatal(err)
	}
	byRegion := map[string]api.Machine{}
	for _, m := range machines {
		byRegion[m.Region] = m
	}
	if len(machines) != 3 || len(byRegion) != 3 {
		t.Fatalf("want one machine in each of 3 regions, got %d: %+v", len(machines), byRegion)
	}

	// Stop the ams machine: the ams edge answers from the nearest other
	// region, iad (6,200 km) rather than sin (10,500 km).
	mustPerch(t, w, dir, "machine", "stop", byRegion["ams"].ID)
	expectAnswer(t, edges["ams"], "hello", "iad")

	// An agent restart neither loses nor duplicates machines, and the
	// running ones keep running (same instance, same start time).
	before, _ := c.GetMachine(ctx, "hello", byRegion["iad"].ID)
	pidBefore := machinePID(t, info, "iad")
	if err := w.RestartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	expectAnswer(t, edges["iad"], "hello", "iad")
	after, _ := c.GetMachine(ctx, "hello", byRegion["iad"].ID)
	if after.InstanceID != before.InstanceID || after.State != api.StateStarted {
		t.Errorf("iad machine after agent restart: instance %s state %s, want instance %s started", after.InstanceID, after.State, before.InstanceID)
	}
	if pid := machinePID(t, info, "iad"); pid != pidBefore {
		t.Errorf("iad machine's process changed across the agent restart: pid %d, was %d", pid, pidBefore)
	}
	// A crash (kill -9) under load: started again at once, the edge back.
	crashAgentUnderLoad(t, w, "iad", "hello", *after) // agentcrash_test.go
	assertMachines(t, w, 3)

	// A server restart keeps apps, machines and pushed images.
	if err := w.RestartServer(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "apps survive a server restart", func() (bool, string) {
		apps, err := c.ListApps(ctx)
		return err == nil && len(apps) == 1 && apps[0].Name == "hello", fmt.Sprint(apps, err)
	})
	assertMachines(t, w, 3)
	// A new machine of the image pushed before the restart starts after it.
	mustPerch(t, w, dir, "scale", "count", "2", "--region", "sin", "--yes")
	assertMachines(t, w, 4)
	ms, _ := c.ListMachines(ctx, "hello", "sin")
	for _, m := range ms {
		if m.State != api.StateStarted {
			t.Errorf("sin machine %s is %s after scale, want started", m.ID, m.State)
		}
	}
	expectAnswer(t, edges["sin"], "hello", "sin")

	// perch status and logs show what happened.
	out := mustPerch(t, w, dir, "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(jsonPart(out)), &st); err != nil || len(st.Machines) != 4 {
		t.Errorf("perch status --json: %v, %d machines", err, len(st.Machines))
	}
	eventually(t, 20*time.Second, "perch logs shows the app's lines from every region", func() (bool, string) {
		out, _ := perch(t, w, dir, "logs")
		return strings.Contains(out, "hello listening on :8080 in iad") && strings.Contains(out, "in sin") && strings.Contains(out, "in ams"), out
	})
}

// machinePID is the pid of the single machine process on region's host.
func machinePID(t *testing.T, info devcluster.Info, region string) int {
	t.Helper()
	for _, r := range info.Regions {
		if r.Code != region {
			continue
		}
		out, err := exec.Command("runc", "--root", filepath.Join(r.StateDir, "runc", "runc"), "list", "-f", "json").Output()
		if err != nil {
			t.Fatalf("runc list in %s: %v", region, err)
		}
		var cs []struct {
			ID     string `json:"id"`
			Pid    int    `json:"pid"`
			Status string `json:"status"`
		}
		_ = json.Unmarshal(out, &cs)
		for _, c := range cs {
			if c.Status == "running" {
				return c.Pid
			}
		}
	}
	t.Fatalf("no running machine process in %s", region)
	return 0
}

func assertMachines(t *testing.T, w *devcluster.World, n int) {
	t.Helper()
	ms, err := w.Client().ListMachines(context.Background(), "hello", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != n {
		t.Fatalf("want %d machines, got %d", n, len(ms))
	}
	seen := map[string]bool{}
	for _, m := range ms {
		if seen[m.ID] {
			t.Fatalf("machine %s listed twice", m.ID)
		}
		seen[m.ID] = true
	}
}

type statusJSON struct {
	App      api.App       `json:"app"`
	Machines []api.Machine `json:"machines"`
}

// jsonPart drops any line before the JSON document (warnings).
func jsonPart(s string) string {
	if i := strings.IndexAny(s, "[{"); i >= 0 {
		return s[i:]
	}
	return s
}
