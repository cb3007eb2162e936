package devcluster_test

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/testimage"
)

// TestRedisOnVolumeKeepsDataAcrossDeploysAndAgentKill runs a real
// database, Debian's redis-server built from Debian's packages, as
// Debian runs it (the non-root user redis), with its append-only file on
// a volume, behind a raw TCP service: a key SET through the edge is
// still there after 5 deploys (each a new release, updated in place on
// the volume) and after the host's agent is killed with SIGKILL and
// started again. The file redis wrote is, on the host's volume, owned by
// the image's redis uid: the idmapped mount of the machine's user
// namespace kept the ids the machine sees.
func TestRedisOnVolumeKeepsDataAcrossDeploysAndAgentKill(t *testing.T) {
	parallelFirst(t, 1) // the longest tests; see TestMain
	d := testimage.Redis()
	img := testimage.NeedDebian(t, d)
	redisUID, redisGID := imageUser(t, img, "redis")
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	info := w.Info()
	ref := info.Registry + "/redis:7"
	if err := testimage.Push(ctx, img, ref, info.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Client().CreateApp(ctx, api.CreateAppRequest{AppName: "kv"}); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	dir := t.TempDir()
	cmd := append(append([]string{}, d.Config.Cmd...), "--appendonly", "yes", "--appendfsync", "always", "--dir", "/data")
	quoted := make([]string, len(cmd))
	for i, c := range cmd {
		quoted[i] = strconv.Quote(c)
	}
	release := func(round int) {
		t.Helper()
		writeFile(t, filepath.Join(dir, "perch.toml"), fmt.Sprintf(`
app = "kv"
primary_region = "iad"

[build]
  image = %q

[experimental]
  cmd = [%s]

[env]
  ROUND = "%d"

[[mounts]]
  source = "data"
  destination = "/data"

[[services]]
  protocol = "tcp"
  internal_port = 6379
  [[services.ports]]
    port = %d
`, ref, strings.Join(quoted, ", "), round, port))
	}
	edge := net.JoinHostPort(info.Regions[0].EdgeAddr, strconv.Itoa(port))
	begin := time.Now()

	release(0)
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	eventually(t, 30*time.Second, "SET through the edge", func() (bool, string) {
		got, err := redisCLI(edge, "SET", "row", "kept-42")
		return err == nil && got == "OK", fmt.Sprintf("%q %v", got, err)
	})
	has := func(what string) {
		t.Helper()
		eventually(t, 30*time.Second, what+": GET row through the edge", func() (bool, string) {
			got, err := redisCLI(edge, "GET", "row")
			return err == nil && got == "kept-42", fmt.Sprintf("%q %v", got, err)
		})
	}
	has("right after the SET")

	ms, err := liveMachines(ctx, w, "kv")
	if err != nil || len(ms) != 1 {
		t.Fatalf("machines of kv: %v %v; want 1", ids(ms), err)
	}
	id := ms[0].ID
	for round := 1; round <= 5; round++ {
		release(round)
		mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
		ms, err := liveMachines(ctx, w, "kv")
		if err != nil || len(ms) != 1 || ms[0].ID != id || ms[0].Config.Env["ROUND"] != strconv.Itoa(round) {
			t.Fatalf("after deploy %d: machines %v %v; want %s updated in place to ROUND=%d", round, ids(ms), err, id, round)
		}
		has(fmt.Sprintf("after deploy %d", round))
	}

	if err := w.KillAgent("iad"); err != nil {
		t.Fatal(err)
	}
	if err := w.StartAgent(ctx, "iad"); err != nil {
		t.Fatal(err)
	}
	has("after the agent was killed and restarted")

	// What redis wrote, seen on the host's volume: owned by the uid redis
	// has in the image, not by the host uid redis runs as in the
	// machine's user namespace (checked to differ, so the idmapped mount
	// is what kept the ids).
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", machinePID(t, info, "iad")))
	if err != nil {
		t.Fatal(err)
	}
	var hostUID uint32
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			n, _ := strconv.Atoi(f[1])
			hostUID = uint32(n)
		}
	}
	if hostUID == redisUID {
		t.Errorf("redis runs as host uid %d, its uid in the image: the machine has no user namespace of its own", hostUID)
	}
	vols, err := w.Client().ListVolumes(ctx, "kv")
	if err != nil || len(vols) != 1 {
		t.Fatalf("volumes of kv: %+v %v", vols, err)
	}
	aof := filepath.Join(agent.VolumeMountPoint(info.Regions[0].StateDir, vols[0].ID), "appendonlydir")
	entries, err := os.ReadDir(aof)
	if err != nil || len(entries) == 0 {
		t.Fatalf("redis's append-only files on the host's volume: %v %v", entries, err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != redisUID || st.Gid != redisGID {
			t.Errorf("%s on the volume is owned by %d:%d, want redis's %d:%d as in the image", e.Name(), st.Uid, st.Gid, redisUID, redisGID)
		}
	}
	t.Logf("5 deploys and an agent kill took %s", time.Since(begin).Round(time.Second))
}

// redisCLI runs one command with redis-cli (Debian's redis-tools, which
// scripts/deps.sh installs) against the redis at addr, and returns its
// answer. redis-cli exits 0 on a server error too: that answer is the
// error's text, which no caller takes for a value.
func redisCLI(addr string, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"--raw", "-h", host, "-p", port}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// imageUser returns the uid and gid of user in img's /etc/passwd.
func imageUser(t *testing.T, img v1.Image, user string) (uint32, uint32) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no etc/passwd in the image: %v", err)
		}
		if strings.TrimPrefix(h.Name, "./") != "etc/passwd" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Split(l, ":")
			if len(f) > 3 && f[0] == user {
				uid, _ := strconv.Atoi(f[2])
				gid, _ := strconv.Atoi(f[3])
				return uint32(uid), uint32(gid)
			}
		}
		t.Fatalf("no user %s in the image's /etc/passwd", user)
	}
}
