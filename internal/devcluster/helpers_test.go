package devcluster_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/testimage"
	"github.com/perchhq/perch/internal/testport"
	"github.com/perchhq/perch/internal/volume"
)

var worldSeq atomic.Int32

// startWorld starts a dev world for the test, on its own loopback range so
// that tests never share an edge address, and closes it at cleanup,
// checking that nothing is left behind.
func startWorld(t *testing.T, opts devcluster.Options) *devcluster.World {
	t.Helper()
	worldSlot(t)
	n := worldSeq.Add(1)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if len(opts.Regions) == 0 {
		opts.Regions = []string{"iad", "ams", "sin"}
	}
	opts.APIListen = "127.0.0.1:0"
	opts.EdgeBase = netip.AddrFrom4([4]byte{127, byte(100 + os.Getpid()%50), byte(n), 1})
	opts.PerchBin = perchBin
	if opts.HostTimeout == 0 {
		opts.HostTimeout = 4 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	w, err := devcluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start dev world: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("close dev world: %v", err)
		}
		assertNothingLeft(t, w.Info())
		keepLogs(t, w.Info())
	})
	return w
}

// keepLogs copies a failed test's world logs to $PERCH_KEEP_LOGS/<test>,
// when set, before the test's directory is removed; with
// PERCH_KEEP_LOGS_ALL=1, a passing test's too.
func keepLogs(t *testing.T, info devcluster.Info) {
	dst := os.Getenv("PERCH_KEEP_LOGS")
	if dst == "" || (!t.Failed() && os.Getenv("PERCH_KEEP_LOGS_ALL") != "1") {
		return
	}
	dst = filepath.Join(dst, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.CopyFS(dst, os.DirFS(filepath.Join(info.Dir, "logs"))); err != nil {
		t.Logf("keeping the world's logs: %v", err)
		return
	}
	t.Logf("the world's logs are in %s", dst)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// assertNothingLeft checks that no network namespace, veth, bridge, 6PN
// TUN device, nftables table or mount of the world's machines remains.
func assertNothingLeft(t *testing.T, info devcluster.Info) {
	t.Helper()
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, r := range info.Regions {
		if bytes.Contains(mounts, []byte(r.StateDir)) {
			t.Errorf("a mount under %s is left behind", r.StateDir)
		}
		if l := volume.Loops(r.StateDir); len(l) > 0 {
			t.Errorf("loop devices of volumes under %s are left behind: %v", r.StateDir, l)
		}
	}
	// Loop devices of machines' disks, and their claims on host id ranges
	// (their user namespaces' pins go with them).
	var owners []string
	for _, pat := range []string{"/sys/block/loop*/loop/backing_file", "/run/perch/idranges/[0-9]*"} {
		files, _ := filepath.Glob(pat)
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				owners = append(owners, f+": "+strings.TrimSpace(string(b)))
			}
		}
	}
	for _, o := range owners {
		for _, r := range info.Regions {
			if strings.Contains(o, r.StateDir+"/") {
				t.Errorf("left behind: %s", o)
			}
		}
	}
	out, _ := exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		for _, r := range info.Regions {
			if r.HostID != "" && strings.Contains(line, bridgeOf(r.HostID)+":") {
				t.Errorf("bridge of %s left behind: %s", r.Code, line)
			}
			if r.HostID != "" && strings.Contains(line, agent.SixPNName(r.HostID)+":") {
				t.Errorf("6PN TUN device of %s left behind: %s", r.Code, line)
			}
		}
	}
	rules, _ := exec.Command("ip", "-6", "rule", "show").Output()
	for _, r := range info.Regions {
		if r.HostID != "" && strings.Contains(string(rules), "iif "+bridgeOf(r.HostID)+" ") {
			t.Errorf("6PN routing rule of %s left behind: %s", r.Code, rules)
		}
	}
	tables, err := hostnet.PolicyTables()
	if err != nil {
		t.Errorf("list nftables tables: %v", err)
	}
	for _, r := range info.Regions {
		for _, tb := range tables {
			if r.HostID != "" && strings.HasSuffix(tb, " "+hostnet.PolicyTable(bridgeOf(r.HostID))) {
				t.Errorf("nftables table of %s left behind: %s", r.Code, tb)
			}
		}
	}
}

func bridgeOf(hostID string) string { return agent.BridgeName(hostID) }

// pushImage builds the sample app and pushes it to the world's registry.
func pushImage(t *testing.T, w *devcluster.World, repo string) string {
	t.Helper()
	return pushImageTo(t, w.Info(), repo)
}

func pushImageTo(t *testing.T, info devcluster.Info, repo string) string {
	t.Helper()
	img := buildSample(t)
	ref := info.Registry + "/" + repo
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	auth := &authn.Basic{Username: "x", Password: info.Token}
	if err := remote.Write(r, img, remote.WithAuth(auth)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

// sampleImage is the sample app's image, built once for all tests (which
// may run in parallel).
var sampleImage = sync.OnceValues(func() (v1.Image, error) {
	img, err := testimage.BuildGo(repoRoot(), "./examples/hello")
	if err != nil {
		return nil, err
	}
	// Compute the digests now, once, rather than in concurrent pushes.
	if _, err := img.Digest(); err != nil {
		return nil, err
	}
	return img, nil
})

func buildSample(t *testing.T) v1.Image {
	t.Helper()
	img, err := sampleImage()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// perch runs the CLI against the world, in dir.
func perch(t *testing.T, w *devcluster.World, dir string, args ...string) (string, error) {
	t.Helper()
	return perchEnv(t, w, dir, nil, args...)
}

func mustPerch(t *testing.T, w *devcluster.World, dir string, args ...string) string {
	t.Helper()
	out, err := perch(t, w, dir, args...)
	if err != nil {
		t.Fatalf("perch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get sends a request for app to a region's edge.
func get(edgeAddr, app, path string) (int, string, http.Header, error) {
	req, err := http.NewRequest("GET", "http://"+edgeAddr+path, nil)
	if err != nil {
		return 0, "", nil, err
	}
	req.Host = app + ".perch.local"
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, nil
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// expectAnswer waits until the edge of region answers for app from want.
func expectAnswer(t *testing.T, edgeAddr, app, want string) string {
	t.Helper()
	var body string
	eventually(t, 30*time.Second, fmt.Sprintf("edge %s answers from %s", edgeAddr, want), func() (bool, string) {
		code, b, _, err := get(edgeAddr, app, "/")
		if err != nil {
			return false, err.Error()
		}
		body = b
		return code == 200 && strings.Contains(b, "hello from "+want+" "), fmt.Sprintf("%d %s", code, b)
	})
	return body
}

// freePort is a port free on 127.0.0.1 for TCP and UDP, below the
// ephemeral range (testport.Free): worlds get it as a flag value.
func freePort(t *testing.T) int { return testport.Free(t) }

func asHTTPError(err error, target **api.HTTPError) bool { return errors.As(err, target) }

// perchEnv is perch with extra environment (later entries win).
func perchEnv(t *testing.T, w *devcluster.World, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	info := w.Info()
	// A command that hangs fails its test instead of holding the whole
	// package until go test's timeout: SIGQUIT makes it print where its
	// goroutines wait (into out), and it is killed 10 s later.
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, perchBin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PERCH_API_URL="+info.APIURLs(), "PERCH_API_TOKEN="+info.Token, "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/.config")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	t.Logf("$ perch %s\n%s", strings.Join(args, " "), out)
	if ctx.Err() != nil {
		err = fmt.Errorf("did not end within %v (its goroutines are above): %w", cliTimeout, err)
	}
	return string(out), err
}

// cliTimeout bounds one perch command of a test.
const cliTimeout = 6 * time.Minute
