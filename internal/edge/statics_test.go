package edge

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// dirStatics hands out a prepared directory per image, as the agent's
// copies out of its images (agent/statics.go) do.
type dirStatics map[string]string

func (d dirStatics) StaticDir(_ context.Context, ref, dir string) (string, error) {
	if p, ok := d[ref+dir]; ok {
		return p, nil
	}
	return "", fmt.Errorf("no %s in %s", dir, ref)
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for name, body := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, mtime, mtime)
	}
	return dir
}

// placeRelease puts machine m of app on release rel, running image ref,
// with statics.
func (w *world) placeRelease(app string, m *machine, rel, ref string, statics []api.Static) {
	w.place(app, m, 80, api.StateStarted)
	key := store.MachineKey(app, m.id)
	sp := w.e.table.machines[key]
	sp.Config.Statics = statics
	sp.Config.Metadata = map[string]string{"perch_release": rel}
	w.e.table.setMachine(key, sp)
	w.e.table.setStatus(key, store.MachineStatus{ID: m.id, App: app, HostID: "h-" + m.region, State: api.StateStarted, Ready: true, ImageRef: ref})
}

func staticGet(t *testing.T, srv interface{ Client() *http.Client }, url, path string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "web.perch.local"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return do(t, &http.Client{Transport: tr}, req)
}

func TestStatics(t *testing.T) {
	css := strings.Repeat("body { color: #333; }\n", 40) // worth compressing
	v1 := writeFiles(t, map[string]string{
		"app.css":         css,
		"app.js":          "console.log('plain')",
		"app.js.gz":       gzipped(t, "console.log('precompressed')"),
		"logo.bin":        "0123456789",
		"docs/index.html": "<h1>docs</h1>",
	})
	v2 := writeFiles(t, map[string]string{"app.css": "v2"})
	w := newWorld(t, "ams")
	w.e.cfg.Statics = dirStatics{"reg/web@sha256:1/app/public": v1, "reg/web@sha256:2/app/public": v2}
	w.app("web")
	m := startMachine(t, "m1", "ams", "127.0.0.2", nil)
	statics := []api.Static{{GuestPath: "/app/public", URLPrefix: "/static/"}}
	w.placeRelease("web", m, "v1", "reg/web@sha256:1", statics)
	w.commit()
	srv := w.serve(80)

	res, body := staticGet(t, srv, srv.URL, "/static/app.css", nil)
	etag := res.Header.Get("ETag")
	if res.StatusCode != 200 || body != css || etag == "" || res.Header.Get("Last-Modified") != "Fri, 02 Jan 2026 03:04:05 GMT" || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("GET app.css: %d %q, headers %v", res.StatusCode, body[:min(len(body), 40)], res.Header)
	}
	var got int64 // counted when the edge has finished the request, maybe after the client read it
	waitFor(t, "the static answer's bytes counted as egress", func() bool {
		got += w.e.TakeEgress()["web"]
		return got >= int64(len(css))
	})
	if got != int64(len(css)) {
		t.Errorf("egress of the static answer: %d bytes, want its body's %d (metered as the app's)", got, len(css))
	}
	t.Run("ETag gives 304", func(t *testing.T) {
		res, body := staticGet(t, srv, srv.URL, "/static/app.css", map[string]string{"If-None-Match": etag})
		if res.StatusCode != http.StatusNotModified || body != "" {
			t.Errorf("If-None-Match: %d %q, want 304", res.StatusCode, body)
		}
	})
	t.Run("Range gives 206", func(t *testing.T) {
		res, body := staticGet(t, srv, srv.URL, "/static/logo.bin", map[string]string{"Range": "bytes=2-5"})
		if res.StatusCode != http.StatusPartialContent || body != "2345" || res.Header.Get("Content-Range") != "bytes 2-5/10" {
			t.Errorf("Range: %d %q %q, want 206 \"2345\"", res.StatusCode, body, res.Header.Get("Content-Range"))
		}
		// With gzip accepted too, a range is of the plain file.
		res, body = staticGet(t, srv, srv.URL, "/static/app.css", map[string]string{"Range": "bytes=0-3", "Accept-Encoding": "gzip"})
		if res.StatusCode != http.StatusPartialContent || body != "body" || res.Header.Get("Content-Encoding") != "" {
			t.Errorf("Range with gzip: %d %q %q", res.StatusCode, body, res.Header.Get("Content-Encoding"))
		}
	})
	t.Run("gzip", func(t *testing.T) {
		res, body := staticGet(t, srv, srv.URL, "/static/app.css", map[string]string{"Accept-Encoding": "br, gzip"})
		if res.Header.Get("Content-Encoding") != "gzip" || gunzip(t, body) != css || res.Header.Get("Vary") != "Accept-Encoding" {
			t.Errorf("on the fly: encoding %q vary %q", res.Header.Get("Content-Encoding"), res.Header.Get("Vary"))
		}
		if len(body) >= len(css) {
			t.Errorf("gzip body %d bytes, plain %d", len(body), len(css))
		}
		gzTag := res.Header.Get("ETag")
		if gzTag == etag {
			t.Errorf("the gzip variant has the plain file's ETag %s", etag)
		}
		if res, _ := staticGet(t, srv, srv.URL, "/static/app.css", map[string]string{"Accept-Encoding": "gzip", "If-None-Match": gzTag}); res.StatusCode != http.StatusNotModified {
			t.Errorf("If-None-Match of the gzip variant: %d", res.StatusCode)
		}
		res, body = staticGet(t, srv, srv.URL, "/static/app.js", map[string]string{"Accept-Encoding": "gzip"})
		if res.Header.Get("Content-Encoding") != "gzip" || gunzip(t, body) != "console.log('precompressed')" {
			t.Errorf("precompressed: encoding %q body %q", res.Header.Get("Content-Encoding"), body)
		}
		if res, body := staticGet(t, srv, srv.URL, "/static/app.js", map[string]string{"Accept-Encoding": "gzip;q=0"}); res.Header.Get("Content-Encoding") != "" || body != "console.log('plain')" {
			t.Errorf("gzip;q=0: encoding %q body %q", res.Header.Get("Content-Encoding"), body)
		}
	})
	t.Run("index document", func(t *testing.T) {
		if res, body := staticGet(t, srv, srv.URL, "/static/docs/", nil); res.StatusCode != 200 || body != "<h1>docs</h1>" {
			t.Errorf("directory: %d %q", res.StatusCode, body)
		}
	})
	t.Run("path traversal refused", func(t *testing.T) {
		for _, p := range []string{"/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/docs/..%2f..%2fsecret"} {
			res, body := staticGet(t, srv, srv.URL, p, nil)
			if res.StatusCode != http.StatusBadRequest {
				t.Errorf("GET %s: %d %q, want 400", p, res.StatusCode, body)
			}
		}
	})
	if n := m.hits.Load(); n != 0 {
		t.Fatalf("the machine saw %d requests for static files, want none", n)
	}
	t.Run("what statics lack goes to the app", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{{"GET", "/static/missing.css"}, {"GET", "/staticx"}, {"POST", "/static/app.css"}, {"GET", "/"}} {
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			req.Host = "web.perch.local"
			res, body := do(t, srv.Client(), req)
			if res.StatusCode != 200 || answeredBy(t, body).Machine != "m1" {
				t.Errorf("%s %s: %d %q, want the app's answer", tc.method, tc.path, res.StatusCode, body)
			}
		}
	})
	t.Run("statics follow the release", func(t *testing.T) {
		m2 := startMachine(t, "m2", "ams", "127.0.0.3", nil)
		w.placeRelease("web", m2, "v2", "reg/web@sha256:2", statics)
		w.commit()
		if res, body := staticGet(t, srv, srv.URL, "/static/app.css", nil); res.StatusCode != 200 || body != "v2" {
			t.Errorf("after v2: %d %q, want v2's file", res.StatusCode, body[:min(len(body), 20)])
		}
	})
}

func gzipped(t *testing.T, s string) string {
	t.Helper()
	var b strings.Builder
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

func gunzip(t *testing.T, s string) string {
	t.Helper()
	zr, err := gzip.NewReader(strings.NewReader(s))
	if err != nil {
		t.Errorf("not gzip: %v", err)
		return ""
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Errorf("gunzip: %v", err)
	}
	return string(b)
}
