package testimage

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/perchhq/perch/internal/image"
	"github.com/perchhq/perch/internal/registry"
)

// Unpack serves a real Perch registry (internal/registry) for the test,
// pushes img to it as repo:tag and pulls it back with the agent's image
// store (internal/image), so the test gets what an agent would run: the
// image's unpacked root filesystem and its config. Both live in the
// test's temporary directory.
func Unpack(t testing.TB, img v1.Image, repoTag string) *image.Image {
	t.Helper()
	const token = "testimage-token"
	reg, err := registry.NewStandalone(t.TempDir(), registry.TokenFunc(func(tok string) bool { return tok == token }), registry.Options{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	ref := host + "/" + repoTag
	ctx := context.Background()
	if err := Push(ctx, img, ref, token); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// t.TempDir is private to root; the machine's users must reach their files.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := image.New(dir, nil).Pull(ctx, ref, image.Options{Tokens: map[string]string{host: token}})
	if err != nil {
		t.Fatal(err)
	}
	return got
}
