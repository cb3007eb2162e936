// Package benchworld is what the benchmarks that need a whole platform
// share: a dev world in a temporary directory, the sample app
// (examples/hello) pushed to its registry, and the perch CLI run against it.
package benchworld

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/testimage"
)

// World is a dev world started for a benchmark.
type World struct {
	*devcluster.World
	// Bin is the perch binary (absolute) agents and CLI commands run from.
	Bin string
	// Dir is the temporary directory the world and apps live in.
	Dir string
}

// Start brings a dev world up in a new temporary directory: the control
// plane with embedded NATS in this process, one agent process per region,
// warnings logged to stderr. It needs root.
func Start(ctx context.Context, perchBin string, regions []string) (*World, error) {
	bin, err := filepath.Abs(perchBin)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "perch-bench-")
	if err != nil {
		return nil, err
	}
	w, err := devcluster.Start(ctx, devcluster.Options{
		Dir: filepath.Join(dir, "world"), Regions: regions, APIListen: "127.0.0.1:0",
		PerchBin: bin, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &World{World: w, Bin: bin, Dir: dir}, nil
}

// Close tears the world down and removes its directory.
func (w *World) Close() error {
	err := w.World.Close()
	os.RemoveAll(w.Dir)
	return err
}

// PushHello builds the sample app (examples/hello, from the module root
// the benchmark runs in) into an image, pushes it to the world's registry
// as hello:tag and returns its reference.
func (w *World) PushHello(tag string) (string, error) {
	info := w.Info()
	img, err := testimage.BuildGo(".", "./examples/hello")
	if err != nil {
		return "", err
	}
	ref := info.Registry + "/hello:" + tag
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: info.Token})); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	return ref, nil
}

// AppDir makes (if needed) and returns a directory for an app's perch.toml.
func (w *World) AppDir(app string) (string, error) {
	d := filepath.Join(w.Dir, "apps", app)
	return d, os.MkdirAll(d, 0o755)
}

// Perch runs the perch CLI in dir against the world (PERCH_API_URL and
// PERCH_API_TOKEN) and returns its combined output.
func (w *World) Perch(dir string, args ...string) (string, error) {
	info := w.Info()
	cmd := exec.Command(w.Bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PERCH_API_URL="+info.APIURL, "PERCH_API_TOKEN="+info.Token)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("perch %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
