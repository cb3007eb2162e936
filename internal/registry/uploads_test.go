package registry

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestAbandonedUploadStreamsToDisk: a 200 MiB upload (PATCH, never PUT)
// goes to a file, not the control plane's memory, and is removed once
// idle for the upload timeout.
func TestAbandonedUploadStreamsToDisk(t *testing.T) {
	const size = 200 << 20
	dir := t.TempDir()
	srv := startRegistryWith(t, dir, Options{UploadTimeout: 2 * time.Second})

	runtime.GC()
	heap0, rss0 := heapInuse(), vmRSS(t)
	loc := startUpload(t, srv, "app")
	resp := send(t, http.MethodPatch, srv.URL+loc, io.LimitReader(&pattern{}, size), nil)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Range") != fmt.Sprintf("0-%d", size-1) {
		t.Fatalf("PATCH of %d bytes: %s, Range %q", size, resp.Status, resp.Header.Get("Range"))
	}
	runtime.GC()
	heap1, rss1 := heapInuse(), vmRSS(t)
	t.Logf("after a 200 MiB PATCH: heap in use grew %s, RSS grew %s", mib(heap1-heap0), mib(rss1-rss0))
	if heap1-heap0 > 8<<20 {
		t.Errorf("heap in use grew by %s for a 200 MiB upload, want the upload on disk", mib(heap1-heap0))
	}
	if rss1-rss0 > 8<<20 {
		t.Errorf("RSS grew by %s for a 200 MiB upload, want the upload on disk", mib(rss1-rss0))
	}
	files, _ := filepath.Glob(filepath.Join(dir, "uploads", "*"))
	if len(files) != 1 {
		t.Fatalf("uploads/ holds %q, want the one upload", files)
	}
	if fi, err := os.Stat(files[0]); err != nil || fi.Size() != size {
		t.Fatalf("the upload's file: %v, %v; want %d bytes", fi, err, size)
	}

	// Abandoned: removed once idle for the timeout.
	start := time.Now()
	waitFor(t, 30*time.Second, "the abandoned upload's file removed", func() bool {
		_, err := os.Stat(files[0])
		return os.IsNotExist(err)
	})
	t.Logf("abandoned upload removed %v after its last request (timeout 2s)", time.Since(start))
	resp = send(t, http.MethodPut, srv.URL+loc+"?digest=sha256:"+strings.Repeat("0", 64), nil, nil)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(readAll(t, resp), "BLOB_UPLOAD_UNKNOWN") {
		t.Errorf("PUT to the removed upload: %s, want 404 BLOB_UPLOAD_UNKNOWN", resp.Status)
	}
}

// TestUploadsCappedAndChecked: a blob over the cap is refused with 413 as
// crane pushes it, a wrong digest with 400, a wrong Content-Range with
// 416; none leaves a file.
func TestUploadsCappedAndChecked(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistryWith(t, dir, Options{MaxBlobBytes: 1 << 20})

	img, err := random.Image(2<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	err = remote.Write(srv.ref(t, "big:v1"), img, withToken(testToken))
	if err == nil || !strings.Contains(err.Error(), "SIZE_INVALID") || !strings.Contains(err.Error(), "limit of 1048576 bytes") {
		t.Errorf("push of a 2 MiB layer over a 1 MiB cap: %v, want SIZE_INVALID (413) saying the limit", err)
	}

	loc := startUpload(t, srv, "app")
	resp := send(t, http.MethodPatch, srv.URL+loc, strings.NewReader("hello"), map[string]string{"Content-Range": "5-9"})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("PATCH at the wrong offset: %s, want 416", resp.Status)
	}
	resp = send(t, http.MethodPut, srv.URL+loc+"?digest=sha256:"+strings.Repeat("0", 64), strings.NewReader("hello"), nil)
	if body := readAll(t, resp); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "DIGEST_INVALID") {
		t.Errorf("PUT with a wrong digest: %s %s, want 400 DIGEST_INVALID", resp.Status, body)
	}

	small, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(srv.ref(t, "small:v1"), small, withToken(testToken)); err != nil {
		t.Fatalf("push under the cap: %v", err)
	}
	if _, err := remote.Image(srv.ref(t, "small:v1"), withToken(testToken)); err != nil {
		t.Fatalf("pull: %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "uploads", "*")); len(files) != 0 {
		t.Errorf("uploads left behind: %q", files)
	}
}

func startRegistryWith(t *testing.T, dir string, opts Options) *testServer {
	t.Helper()
	reg, err := New(context.Background(), dir, testShared(t), TokenFunc(func(tok string) bool { return tok == testToken }), opts, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(reg.Close)
	return serve(t, reg)
}

// startUpload POSTs a new upload to repo and returns its Location.
func startUpload(t *testing.T, srv *testServer, repo string) string {
	t.Helper()
	resp := send(t, http.MethodPost, srv.URL+"/v2/"+repo+"/blobs/uploads/", nil, nil)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Location") == "" {
		t.Fatalf("POST upload: %s, Location %q", resp.Status, resp.Header.Get("Location"))
	}
	return resp.Header.Get("Location")
}

func send(t *testing.T, method, url string, body io.Reader, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth("x", testToken)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// pattern is an endless stream of generated bytes.
type pattern struct{ n byte }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = p.n
		p.n = p.n*31 + 7
	}
	return len(b), nil
}

func heapInuse() int64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// vmRSS is this process's resident memory, from /proc/self/status.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestManifestTooLarge: a manifest over the registry's 4 MiB is refused
// with 413 SIZE_INVALID, whether its length is declared or streamed, and
// nothing of it is stored.
func TestManifestTooLarge(t *testing.T) {
	dir := t.TempDir()
	srv := startRegistryWith(t, dir, Options{})
	big := `{"schemaVersion":2,"pad":"` + strings.Repeat("a", maxManifestSize) + `"}`
	for _, tc := range []struct {
		name string
		body io.Reader
	}{
		{"declared", strings.NewReader(big)},
		{"streamed", io.MultiReader(strings.NewReader(big))}, // no length: chunked
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := send(t, http.MethodPut, srv.URL+"/v2/app/manifests/v1", tc.body,
				map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
			if body := readAll(t, resp); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "SIZE_INVALID") || !strings.Contains(body, "larger than 4194304 bytes") {
				t.Errorf("PUT of a %d-byte manifest: %s %s, want 413 SIZE_INVALID saying the limit", len(big), resp.Status, body)
			}
		})
	}
	resp := send(t, http.MethodGet, srv.URL+"/v2/app/manifests/v1", nil, nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET of the refused manifest's tag: %s, want 404", resp.Status)
	}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if b, _ := os.ReadFile(p); strings.Contains(string(b), `"pad":"aaaa`) {
			t.Errorf("the refused manifest is stored in %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t); n != 0 {
		t.Errorf("the manifest stream holds %d records after refused manifests, want 0", n)
	}
}
