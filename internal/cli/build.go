package cli

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/build"
	"github.com/perchhq/perch/internal/config"
)

// buildFlags are perch deploy's flags for building the app's Dockerfile.
type buildFlags struct {
	Args       []string // --build-arg K=V
	Target     string   // --build-target
	ContextMax int64    // --build-context-max, MB
}

// dockerfileFor is the Dockerfile perch deploy builds when no image is
// given: [build] dockerfile, else Dockerfile, next to the config file, as
// an absolute path. "" when there is none.
func dockerfileFor(cfg *config.Config, configPath string) string {
	dir := filepath.Dir(configPath)
	p := cfg.Build.Dockerfile
	if p == "" {
		p = "Dockerfile"
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	if st, err := os.Stat(p); err == nil && !st.IsDir() {
		if abs, err := filepath.Abs(p); err == nil {
			return abs // build.Options.Dockerfile: absolute, or relative to the context
		}
		return p
	}
	return ""
}

// buildAndPush builds dockerfile (context: the config file's directory)
// with the local buildkitd and pushes it to the control plane's registry as
// <app>:deployment-<id>; it returns the pushed reference.
func buildAndPush(ctx context.Context, out io.Writer, cfg *config.Config, configPath, dockerfile, app string, f buildFlags) (string, error) {
	args := map[string]string{}
	for k, v := range cfg.Build.Args {
		args[k] = v
	}
	for _, a := range f.Args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return "", fmt.Errorf("--build-arg %q: want NAME=VALUE, e.g. --build-arg GO_VERSION=1.26", a)
		}
		args[k] = v
	}
	target := cfg.Build.Target
	if f.Target != "" {
		target = f.Target
	}
	if f.ContextMax <= 0 {
		return "", fmt.Errorf("--build-context-max %d: want a size in MB above 0", f.ContextMax)
	}
	creds, err := currentCredentials()
	if err != nil {
		return "", err
	}
	// A cluster's servers, comma-separated: images go to the first's
	// registry (each server keeps its own blobs; docs/servers.md).
	first, _, _ := strings.Cut(creds.APIURL, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("the API URL %q is not a URL; log in again with `perch auth login`", creds.APIURL)
	}
	ref := fmt.Sprintf("%s/%s:deployment-%s", u.Host, app, deploymentID())
	// Refused before the builder starts; build.Build checks again.
	ctxDir, max := filepath.Dir(configPath), f.ContextMax<<20
	if size, err := build.ContextSize(ctxDir, max); err != nil {
		return "", err
	} else if size > max {
		return "", &build.ContextTooLargeError{Size: size, Max: max, Dir: ctxDir}
	}
	dir, err := build.StateDir()
	if err != nil {
		return "", err
	}
	var insecure []string // FROM images from the control plane's registry
	if u.Scheme == "http" {
		insecure = append(insecure, u.Host)
	}
	d, err := build.Start(ctx, dir, insecure, nil)
	if err != nil {
		return "", err
	}
	if d.Started {
		fmt.Fprintf(out, "Started the local builder (buildkitd, state in %s)\n", dir)
	}
	fmt.Fprintf(out, "Building %s (context %s) → %s\n", dockerfile, ctxDir, ref)
	t0 := time.Now()
	res, err := build.Build(ctx, build.Options{
		Addr: d.Addr, Dir: ctxDir, Dockerfile: dockerfile, Target: target, Args: args,
		Ref: ref, Username: "x", Password: creds.Token, Insecure: u.Scheme == "http",
		MaxContext: max, Progress: out,
	})
	if err != nil {
		return "", err
	}
	fmt.Fprintf(out, "Built and pushed %s (%s) in %.1fs\n", res.Ref, res.Digest, time.Since(t0).Seconds())
	return res.Ref, nil
}

// deploymentID names one deploy's image: time, then random, so ids sort
// by time and two deploys in the same second differ.
func deploymentID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return time.Now().UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b)
}

// buildpacksError is perch deploy's answer to a perch.toml that asks for
// Cloud Native Buildpacks and has no Dockerfile: which builder image they
// need and how to get an image Perch can deploy.
func buildpacksError(b config.Build, configPath string) error {
	builder := cmp.Or(b.Builder, "BUILDER")
	packs := ""
	for _, p := range b.Buildpacks {
		packs += " --buildpack " + p
	}
	return fmt.Errorf("%s asks for buildpacks ([build] builder %q, buildpacks %q), which perch deploy does not run yet: they need the builder image %s with the Cloud Native Buildpacks lifecycle. "+
		"Build with pack where that image is reachable: pack build REGISTRY/APP:TAG --builder %s%s --publish (REGISTRY: the control plane's, the token of perch auth as the password), "+
		"then perch deploy --image REGISTRY/APP:TAG; or add a Dockerfile next to %s (docs/builds.md)",
		configPath, b.Builder, b.Buildpacks, builder, builder, packs, filepath.Base(configPath))
}
