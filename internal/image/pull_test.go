package image

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestPull(t *testing.T) {
	reg := startCountingRegistry(t)
	img := sampleImage(t)
	ref := reg.push(t, "team/app:v1", img)
	s := New(t.TempDir(), testLogger(t))

	got, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	dg, _ := img.Digest()
	if got.Digest != dg.String() || got.Ref != reg.Host+"/team/app@"+dg.String() {
		t.Errorf("Ref, Digest = %s, %s; want %s@%s", got.Ref, got.Digest, reg.Host+"/team/app", dg)
	}
	if diff := cmp.Diff(sampleConfig(), got.Config); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	want := sampleTree()
	if os.Geteuid() != 0 {
		want["home/user/notes"] = "file 0640 hi"
	}
	if diff := cmp.Diff(want, imageTree(t, got)); diff != "" {
		t.Errorf("rootfs (-want +got):\n%s", diff)
	}
}

func TestPullUsesCache(t *testing.T) {
	reg := startCountingRegistry(t)
	ref := reg.push(t, "app:v1", sampleImage(t))
	s := New(t.TempDir(), testLogger(t))
	first, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 4 {
		t.Errorf("first pull fetched %d blobs, want 4 (config and 3 layers)", n)
	}
	// Mark the tree: a second unpack would replace it and lose the mark.
	mark := filepath.Join(first.Lowers()[0], "unpacked-once")
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	reg.reset()
	second, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 0 {
		t.Errorf("second pull by tag fetched %d blobs, want 0", n)
	}
	if !slices.Equal(second.Lowers(), first.Lowers()) {
		t.Errorf("second pull unpacked to %s, first to %s", second.Lowers(), first.Lowers())
	}
	if _, err := os.Stat(mark); err != nil {
		t.Errorf("second pull unpacked again: %v", err)
	}

	reg.reset()
	if _, err := s.Pull(context.Background(), first.Ref, Options{}); err != nil {
		t.Fatal(err)
	}
	if n := reg.requests.Load(); n != 0 {
		t.Errorf("pull by digest of an unpacked image made %d requests, want 0", n)
	}

	// Another image sharing the layers downloads only what differs.
	img2, _ := mutate.Config(sampleImage(t), v1.Config{Cmd: []string{"other"}})
	ref2 := reg.push(t, "app:v2", img2)
	if _, err := s.Pull(context.Background(), ref2, Options{}); err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 1 {
		t.Errorf("pull of an image sharing all layers fetched %d blobs, want 1 (its config)", n)
	}
}

func TestPullConcurrent(t *testing.T) {
	reg := startCountingRegistry(t)
	ref := reg.push(t, "app:v1", sampleImage(t))
	s := New(t.TempDir(), testLogger(t))

	const n = 4
	var wg sync.WaitGroup
	results := make([]*Image, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = s.Pull(context.Background(), ref, Options{}) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if !slices.Equal(results[i].Lowers(), results[0].Lowers()) {
			t.Errorf("pull %d unpacked to %s, pull 0 to %s", i, results[i].Lowers(), results[0].Lowers())
		}
	}
	if got := reg.blobGets.Load(); got != 4 {
		t.Errorf("%d concurrent pulls fetched %d blobs, want 4: each blob once", n, got)
	}
	want := sampleTree()
	if os.Geteuid() != 0 {
		want["home/user/notes"] = "file 0640 hi"
	}
	if diff := cmp.Diff(want, imageTree(t, results[0])); diff != "" {
		t.Errorf("rootfs (-want +got):\n%s", diff)
	}
	if left, _ := os.ReadDir(filepath.Join(s.dir, "tmp")); len(left) != 0 {
		t.Errorf("tmp/ not empty after the pulls: %v", left)
	}
}

func TestPullPicksPlatform(t *testing.T) {
	reg := startCountingRegistry(t)
	amd := oneFileImage(t, "arch", "amd64")
	arm := oneFileImage(t, "arch", "arm64")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	tag, _ := name.NewTag(reg.Host + "/multi:latest")
	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}
	s := New(t.TempDir(), testLogger(t))

	for _, tt := range []struct{ platform, want string }{{"", "amd64"}, {"linux/arm64", "arm64"}} {
		got, err := s.Pull(context.Background(), tag.String(), Options{Platform: tt.platform})
		if err != nil {
			t.Fatalf("platform %q: %v", tt.platform, err)
		}
		if b, _ := os.ReadFile(filepath.Join(got.Lowers()[0], "arch")); string(b) != tt.want {
			t.Errorf("platform %q: got the %q image, want %q", tt.platform, b, tt.want)
		}
		wantDg, _ := map[string]v1.Image{"amd64": amd, "arm64": arm}[tt.want].Digest()
		if got.Digest != wantDg.String() {
			t.Errorf("platform %q: Digest %s, want the platform image's %s", tt.platform, got.Digest, wantDg)
		}
	}

	_, err := s.Pull(context.Background(), tag.String(), Options{Platform: "linux/s390x"})
	if err == nil || !strings.Contains(err.Error(), "no linux/s390x variant") || !strings.Contains(err.Error(), "linux/arm64/v8") {
		t.Errorf("pull of a missing platform: %v; want an error naming it and the platforms there are", err)
	}
}

func TestPullRefusesEscapingLayer(t *testing.T) {
	reg := startCountingRegistry(t)
	ref := reg.push(t, "evil:v1", oneFileImage(t, "../../escape", "x"))
	dir := t.TempDir()
	s := New(dir, testLogger(t))
	_, err := s.Pull(context.Background(), ref, Options{})
	if err == nil || !strings.Contains(err.Error(), `"../../escape"`) {
		t.Fatalf("pull of a layer escaping the root: %v; want an error naming the entry", err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("failed pull left %v in tmp/", left)
	}
	if _, err := os.Stat(filepath.Join(dir, "images")); err == nil {
		imgs, _ := filepath.Glob(filepath.Join(dir, "images", "*", "*"))
		if len(imgs) != 0 {
			t.Errorf("failed pull left an image behind: %v", imgs)
		}
	}
}
