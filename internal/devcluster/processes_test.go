package devcluster_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/perchhq/perch/internal/devcluster"
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
