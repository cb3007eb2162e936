package agent

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/image"
	"github.com/perchhq/perch/internal/testimage"
)

// An edge's first request for the statics of an image this host runs no
// machine of pulls the image and copies the directory once, however many
// requests ask at the same time; the copy is by digest, so a new release
// gets its own; a guest_path the image lacks is an error, remembered.
func TestStaticCopiesOnFirstRequest(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(reg.Close)
	push := func(tag, body string) string {
		img, err := testimage.FromFiles(map[string]testimage.File{"srv/public/app.css": {Mode: 0o644, Data: []byte(body)}}, v1.Config{Cmd: []string{"/app"}})
		if err != nil {
			t.Fatal(err)
		}
		ref := strings.TrimPrefix(reg.URL, "http://") + "/web:" + tag
		r, _ := name.ParseReference(ref)
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		dg, _ := img.Digest()
		return strings.TrimPrefix(reg.URL, "http://") + "/web@" + dg.String()
	}
	v1Ref, v2Ref := push("v1", "one"), push("v2", "two")
	store := image.New(filepath.Join(t.TempDir(), "images"), nil)
	s := newStaticCopies(filepath.Join(t.TempDir(), "statics"), func() *image.Store { return store }, image.Options{})
	ctx := context.Background()

	var wg sync.WaitGroup
	dirs := make([]string, 8)
	errs := make([]error, 8)
	for i := range dirs {
		wg.Go(func() { dirs[i], errs[i] = s.StaticDir(ctx, v1Ref, "/srv/public") })
	}
	wg.Wait()
	for i := range dirs {
		if errs[i] != nil || dirs[i] != dirs[0] {
			t.Fatalf("request %d: %q, %v; want the one copy %q", i, dirs[i], errs[i], dirs[0])
		}
	}
	if b, err := os.ReadFile(filepath.Join(dirs[0], "app.css")); err != nil || string(b) != "one" {
		t.Fatalf("v1's app.css: %q, %v", b, err)
	}
	d2, err := s.StaticDir(ctx, v2Ref, "/srv/public")
	if b, _ := os.ReadFile(filepath.Join(d2, "app.css")); err != nil || string(b) != "two" || d2 == dirs[0] {
		t.Errorf("v2's statics: %q in %s (v1 in %s), %v", b, d2, dirs[0], err)
	}
	// The image GC drops the copies of images neither a machine here nor
	// the edge uses any more.
	_, v1Digest, _ := strings.Cut(v1Ref, "@")
	s.collect(map[string]bool{v1Digest: true}, 0)
	if _, err := os.Stat(d2); !os.IsNotExist(err) {
		t.Errorf("v2's copy %s is still there after a collection that kept only v1: %v", d2, err)
	}
	if _, err := os.Stat(filepath.Join(dirs[0], "app.css")); err != nil {
		t.Errorf("v1's copy went: %v", err)
	}
	if d, err := s.StaticDir(ctx, v2Ref, "/srv/public"); err != nil || d != d2 {
		t.Errorf("v2's statics after the collection: %s, %v; want a new copy at %s", d, err, d2)
	}
	_, err = s.StaticDir(ctx, v1Ref, "/srv/missing")
	if err == nil || !strings.Contains(err.Error(), "/srv/missing does not exist in the image") {
		t.Errorf("missing guest_path: %v", err)
	}
	reg.Close() // a remembered failure needs no registry
	if _, err2 := s.StaticDir(ctx, v1Ref, "/srv/missing"); err2 == nil || err2.Error() != err.Error() {
		t.Errorf("second request for a missing guest_path: %v, want the remembered %v", err2, err)
	}
	if _, err := s.StaticDir(ctx, "reg/web:latest", "/srv/public"); err == nil || !strings.Contains(err.Error(), "not named by digest") {
		t.Errorf("a tag: %v", err)
	}
}
