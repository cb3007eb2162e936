package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// CopyDir copies a directory as the machine sees it (every layer merged,
// whiteouts applied, symlinks followed inside the image) and refuses one
// whose symlinks lead out of the image.
func TestCopyDir(t *testing.T) {
	reg := startCountingRegistry(t)
	s := New(t.TempDir(), testLogger(t))
	base := sampleImage(t)
	lower := layerTar(t,
		dir("app", 0o755), dir("app/public", 0o755),
		file("app/public/old.css", "old", 0o644),
		file("app/public/app.js", "v1", 0o644),
		dir("srv", 0o755), dir("srv/assets", 0o755), file("srv/assets/logo.svg", "<svg/>", 0o644),
	)
	upper := layerTar(t,
		file("app/public/app.js", "v2", 0o644), // replaces the lower layer's
		whiteout("app/public", "old.css"),
		symlink("app/public/logo.svg", "/srv/assets/logo.svg"), // absolute: inside the image
		symlink("app/public/passwd", "../../../../etc/passwd"), // climbs out: left out
		symlink("app/assets", "/srv/assets"),
		symlink("app/escape", "../../.."),
	)
	img, err := mutate.AppendLayers(base,
		static.NewLayer(lower, types.OCIUncompressedLayer),
		static.NewLayer(upper, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.push(t, "statics:v1", img)
	pulled, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatal(err)
	}

	dst := filepath.Join(t.TempDir(), "public")
	if err := s.CopyDir(pulled, "/app/public", dst); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			rel, _ := filepath.Rel(dst, p)
			got[rel] = string(b)
		}
		return nil
	})
	want := map[string]string{"app.js": "v2", "logo.svg": "<svg/>"}
	if len(got) != len(want) || got["app.js"] != "v2" || got["logo.svg"] != "<svg/>" {
		t.Errorf("copied %v, want %v (whiteout applied, upper layer wins, escaping symlink left out)", got, want)
	}

	// A guest_path through an absolute symlink stays in the image.
	if err := s.CopyDir(pulled, "/app/assets", filepath.Join(t.TempDir(), "assets")); err != nil {
		t.Errorf("CopyDir through an absolute symlink: %v", err)
	}
	for _, tc := range []struct{ dir, want string }{
		{"/app/escape/etc", "points outside the image"},
		{"/app/missing", "/app/missing does not exist in the image"},
		{"/app/public/app.js", "is a file in the image, not a directory"},
	} {
		err := s.CopyDir(pulled, tc.dir, filepath.Join(t.TempDir(), "x"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CopyDir(%s) = %v, want an error containing %q", tc.dir, err, tc.want)
		}
		if tc.want == "points outside the image" && !errors.Is(err, ErrOutsideImage) {
			t.Errorf("CopyDir(%s) error is not ErrOutsideImage", tc.dir)
		}
	}
}
