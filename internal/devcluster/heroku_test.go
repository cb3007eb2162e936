package devcluster_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/heroku/herokutest"
	"github.com/perchhq/perch/internal/testimage"
)

// herokuApp is a Python app as a slug holds it: web prints its config
// var, a variable its .profile.d script sets, its dyno, user and region;
// the worker prints a line every second; release prints once.
var herokuApp = map[string]string{
	"Procfile":              "web: python3 server.py\nworker: python3 worker.py\nrelease: python3 release.py\n",
	".profile.d/turboku.sh": "export PROFILE_VAR=\"set-by-profile-d\"\n",
	"worker.py":             "import os, time\nwhile True:\n    print('worker running as', os.environ['DYNO'], flush=True)\n    time.sleep(1)\n",
	"release.py":            "import os\nprint('release phase ran with', os.environ['DYNO'], 'GREETING=' + os.environ.get('GREETING', ''), flush=True)\n",
	"server.py": `import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        e = os.environ
        body = "GREETING=%s PROFILE_VAR=%s DYNO=%s HOME=%s uid=%d region=%s\n" % (
            e.get("GREETING"), e.get("PROFILE_VAR"), e.get("DYNO"), e.get("HOME"), os.getuid(), e.get("PERCH_REGION"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
`,
}

var herokuProcs = map[string]string{"web": "python3 server.py", "worker": "python3 worker.py", "release": "python3 release.py"}

// TestTurboku: a Heroku app's slug (made from scratch as Heroku documents
// it) on a stack stand-in built from Debian packages (python3, bash, the
// heroku user 1001) is moved by perch launch --from-heroku into three
// regions: web answers through every edge with the config var and the
// .profile.d variable, as uid 1001; the workers run, as many per region as
// the formation's quantity; the release command ran once. Then a new Heroku release (config var changed) is re-synced
// by perch deploy --from-heroku.
func TestTurboku(t *testing.T) {
	base := testimage.NeedDebian(t, testimage.Gunicorn()) // python3 and bash; shared with the recipe's cache
	t0 := time.Now()
	w := startWorld(t, devcluster.Options{})
	info := w.Info()
	stack := withHerokuUser(t, base)
	if err := testimage.Push(context.Background(), stack, info.Registry+"/heroku/heroku:24", info.Token); err != nil {
		t.Fatal(err)
	}

	h := herokutest.New("heroku-token")
	t.Cleanup(h.Close)
	h.AddApp(herokutest.App{Name: "turbo", Region: "us", Stack: "heroku-24",
		ConfigVars: map[string]string{"GREETING": "hello-from-heroku"},
		Formation:  []herokutest.Formation{{Type: "web", Command: herokuProcs["web"], Quantity: 1}, {Type: "worker", Command: herokuProcs["worker"], Quantity: 2}}})
	h.Release("turbo", herokutest.Slug{Tgz: herokutest.MakeSlug(herokuApp), ProcessTypes: herokuProcs, Commit: "c0ffee"}, "Deploy c0ffee")

	dir := t.TempDir()
	env := []string{"HEROKU_API_KEY=heroku-token"}
	out, err := perchEnv(t, w, dir, env, "launch", "--from-heroku", "turbo", "--heroku-api", h.URL, "--regions", "ams,sin", "--smoke-window", "1s")
	if err != nil {
		t.Fatalf("perch launch --from-heroku: %v\n%s", err, out)
	}
	toml, _ := os.ReadFile(filepath.Join(dir, "perch.toml"))
	for _, want := range []string{"heroku app turbo release v1", "primary_region = 'iad'", "release_command = 'release'", "worker: python3 worker.py", "HEROKU_APP_NAME = 'turbo'"} {
		if !strings.Contains(string(toml), want) {
			t.Errorf("perch.toml lacks %q:\n%s", want, toml)
		}
	}
	for _, r := range info.Regions {
		eventually(t, 30*time.Second, "web through the edge of "+r.Code, func() (bool, string) {
			code, body, _, err := get(r.EdgeAddr+":80", "turbo", "/")
			if err != nil {
				return false, err.Error()
			}
			want := fmt.Sprintf("GREETING=hello-from-heroku PROFILE_VAR=set-by-profile-d DYNO=web.1 HOME=/app uid=1001 region=%s", r.Code)
			return code == 200 && strings.Contains(body, want), fmt.Sprintf("%d %s", code, body)
		})
	}
	eventually(t, 30*time.Second, "the worker's and the release command's output in perch logs", func() (bool, string) {
		logs, _ := perch(t, w, dir, "logs")
		return strings.Contains(logs, "worker running as worker.1") && strings.Contains(logs, "release phase ran with release.1 GREETING=hello-from-heroku"), logs
	})
	logs, _ := perch(t, w, dir, "logs")
	if n := strings.Count(logs, "release phase ran"); n != 1 {
		t.Errorf("the release command ran %d times; want once", n)
	}
	ms, err := liveMachines(context.Background(), w, "turbo")
	if err != nil {
		t.Fatal(err)
	}
	groups := map[string]int{}
	for _, m := range ms {
		groups[m.Config.Metadata["fly_process_group"]+"/"+m.Region]++
	}
	for _, r := range info.Regions {
		if groups["web/"+r.Code] != 1 || groups["worker/"+r.Code] != 2 {
			t.Errorf("machines by group/region: %v; want one web and two workers (formation: web 1, worker 2) in %s", groups, r.Code)
		}
	}
	t.Logf("launch --from-heroku into 3 regions: %v", time.Since(t0).Round(time.Second))

	// A new Heroku release: a config var changed, a new slug.
	h.SetConfigVars("turbo", map[string]string{"GREETING": "second-release"})
	h.Release("turbo", herokutest.Slug{Tgz: herokutest.MakeSlug(herokuApp), ProcessTypes: herokuProcs, Commit: "beef"}, "Deploy beef")
	out, err = perchEnv(t, w, dir, env, "deploy", "--from-heroku", "--heroku-api", h.URL, "--smoke-window", "1s", "--strategy", "immediate")
	if err != nil {
		t.Fatalf("perch deploy --from-heroku: %v\n%s", err, out)
	}
	if !strings.Contains(out, "release v2") {
		t.Errorf("deploy --from-heroku did not say it took release v2:\n%s", out)
	}
	r := info.Regions[1]
	eventually(t, 30*time.Second, "the second release through "+r.Code, func() (bool, string) {
		code, body, _, err := get(r.EdgeAddr+":80", "turbo", "/")
		if err != nil {
			return false, err.Error()
		}
		return code == 200 && strings.Contains(body, "GREETING=second-release PROFILE_VAR=set-by-profile-d"), fmt.Sprintf("%d %s", code, body)
	})
	t.Logf("launch and re-sync: %v", time.Since(t0).Round(time.Second))
}

// withHerokuUser is base plus a layer adding heroku-24's user, heroku
// (1001:1001), to /etc/passwd and /etc/group.
func withHerokuUser(t *testing.T, base v1.Image) v1.Image {
	t.Helper()
	rc := mutate.Extract(base)
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.TrimPrefix(h.Name, "./"); n == "etc/passwd" || n == "etc/group" {
			files[n], _ = io.ReadAll(tr)
		}
	}
	files["etc/passwd"] = append(files["etc/passwd"], "heroku:x:1001:1001::/app:/bin/bash\n"...)
	files["etc/group"] = append(files["etc/group"], "heroku:x:1001:\n"...)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range []string{"etc/group", "etc/passwd"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(files[n]))})
		tw.Write(files[n])
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
