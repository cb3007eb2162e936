package image

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func needLayered(t *testing.T, s *Store) {
	t.Helper()
	if !s.layered {
		t.Skip("overlayfs layers need root; the store unpacks whole images here")
	}
}

// withLayer is base with one more layer holding path=content, and env
// set in its config: an app release over a shared base.
func withLayer(t *testing.T, base v1.Image, path, content, env string) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(base, static.NewLayer(layerTar(t, file(path, content, 0o644)), types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	return withEnv(t, img, env)
}

func withEnv(t *testing.T, img v1.Image, env string) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.Config.Env = append(cf.Config.Env, env)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestLayersSharedBetweenImages: two releases over one base share its
// layers on disk; the second pull downloads and unpacks only its own
// layer, a config-only release nothing; each image still sees its own
// tree; blobs are not kept once unpacked.
func TestLayersSharedBetweenImages(t *testing.T) {
	reg := startCountingRegistry(t)
	s := New(t.TempDir(), testLogger(t))
	needLayered(t, s)
	base := sampleImage(t)
	v1Ref := reg.push(t, "app:v1", withLayer(t, base, "srv/release", "one", "R=1"))
	v2Ref := reg.push(t, "app:v2", withLayer(t, base, "srv/release", "two", "R=2"))
	ctx := context.Background()

	first, err := s.Pull(ctx, v1Ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(first.Layers); got != 4 {
		t.Fatalf("v1 has %d layers, want 4", got)
	}
	layers, _ := s.Layers()
	if len(layers) != 4 {
		t.Fatalf("the store holds %d layers after v1, want 4", len(layers))
	}
	reg.reset()
	second, err := s.Pull(ctx, v2Ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 2 {
		t.Errorf("the v2 pull fetched %d blobs, want 2 (its config and its own layer)", n)
	}
	layers, _ = s.Layers()
	if len(layers) != 5 {
		t.Errorf("the store holds %d layers after v2, want 5 (4 shared + 1)", len(layers))
	}
	if !slices.Equal(first.Layers[1:], second.Layers[1:]) {
		t.Errorf("v1 and v2 do not share their base layers:\n%v\n%v", first.Layers, second.Layers)
	}
	for img, want := range map[*Image]string{first: "file 0644 one", second: "file 0644 two"} {
		if got := imageTree(t, img)["srv/release"]; got != want {
			t.Errorf("%s: srv/release = %q, want %q", img.Ref, got, want)
		}
		if got := imageTree(t, img)["bin/sh"]; got != "file 0755 shell" {
			t.Errorf("%s: bin/sh from the base = %q", img.Ref, got)
		}
	}

	// A release that changes only the config.
	v3Ref := reg.push(t, "app:v3", withEnv(t, withLayer(t, base, "srv/release", "two", "R=2"), "MORE=1"))
	before := map[string]time.Time{}
	for _, l := range layers {
		before[l.DiffID] = l.Unpacked
	}
	reg.reset()
	third, err := s.Pull(ctx, v3Ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := reg.blobGets.Load(); n != 1 {
		t.Errorf("a config-only release fetched %d blobs, want 1 (its config)", n)
	}
	after, _ := s.Layers()
	for _, l := range after {
		if !before[l.DiffID].Equal(l.Unpacked) {
			t.Errorf("layer %s unpacked again (%v, first %v)", l.DiffID, l.Unpacked, before[l.DiffID])
		}
	}
	if len(after) != len(before) || !slices.Equal(third.Layers, second.Layers) {
		t.Errorf("a config-only release has layers %v, want v2's %v", third.Layers, second.Layers)
	}
	if !slices.Contains(third.Config.Env, "MORE=1") {
		t.Errorf("v3's config = %v", third.Config.Env)
	}
	for p, d := range tree(t, filepath.Join(s.dir, "blobs")) {
		if !strings.HasPrefix(d, "dir") {
			t.Errorf("blob %s kept after its layer was unpacked", p)
		}
	}
}

// age makes the image look last used d ago.
func age(t *testing.T, s *Store, img *Image, d time.Duration) {
	t.Helper()
	h, _ := v1.NewHash(img.Digest)
	when := time.Now().Add(-d)
	if err := os.Chtimes(filepath.Join(s.imageDir(h), "used"), when, when); err != nil {
		t.Fatal(err)
	}
}

// TestGCLeastRecentlyUsed: GC removes unused images oldest first, and a
// layer only once no image left needs it, until the store fits; an image
// a machine uses stays whatever the cap; a removed image pulls again.
func TestGCLeastRecentlyUsed(t *testing.T) {
	reg := startCountingRegistry(t)
	s := New(t.TempDir(), testLogger(t))
	needLayered(t, s)
	base := sampleImage(t)
	ctx := context.Background()
	var imgs []*Image
	for i, c := range []string{"one", "two", "three"} {
		ref := reg.push(t, "app:"+c, withLayer(t, base, "srv/release", c+strings.Repeat("x", 64<<10), "R="+c)) // not zeros: those become holes
		img, err := s.Pull(ctx, ref, Options{})
		if err != nil {
			t.Fatal(err)
		}
		age(t, s, img, time.Duration(10-i)*time.Hour) // one is the oldest
		imgs = append(imgs, img)
	}
	full, _ := s.Usage()
	if full.Images != 3 || full.Layers != 6 {
		t.Fatalf("usage %+v, want 3 images and 6 layers", full)
	}
	inUse := func(d string) bool { return d == imgs[0].Digest } // the oldest runs a machine
	// Room for the base and about two releases: "two", the oldest unused,
	// goes; "one" stays, in use.
	cap := full.Bytes - 40<<10
	res, err := s.GC(cap, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if res.Images != 1 || res.Layers != 1 || res.Left.Bytes > cap {
		t.Fatalf("GC to %d bytes: %+v, want 1 image and its own layer removed, within the cap", cap, res)
	}
	if _, err := s.load(mustRepo(t, reg.Host+"/app"), mustHash(t, imgs[1].Digest)); err == nil {
		t.Errorf("the least recently used unused image (two) is still there")
	}
	for _, i := range []int{0, 2} {
		if _, err := s.load(mustRepo(t, reg.Host+"/app"), mustHash(t, imgs[i].Digest)); err != nil {
			t.Errorf("image %d removed: %v", i, err)
		}
	}
	// Nothing fits: every unused image goes; the used one and its layers stay.
	res, err = s.GC(0, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if res.Left.Images != 1 || res.Left.Layers != 4 {
		t.Errorf("GC to 0 left %+v, want the used image and its 4 layers", res.Left)
	}
	if got := imageTree(t, imgs[0])["srv/release"]; got == "" {
		t.Errorf("the used image lost its files")
	}
	res, err = s.GC(0, func(string) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	if res.Left.Bytes != 0 || res.Left.Images != 0 || res.Left.Layers != 0 {
		t.Errorf("GC of an unused store left %+v", res.Left)
	}
	reg.reset()
	again, err := s.Pull(ctx, imgs[2].Ref, Options{})
	if err != nil {
		t.Fatalf("pull after GC: %v", err)
	}
	if reg.blobGets.Load() == 0 || imageTree(t, again)["bin/sh"] != "file 0755 shell" {
		t.Errorf("the image pulled again after GC is not whole")
	}
}

func mustRepo(t *testing.T, s string) name.Repository {
	t.Helper()
	r, err := name.NewRepository(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustHash(t *testing.T, s string) v1.Hash {
	t.Helper()
	h, err := v1.NewHash(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
