package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/build"
	"github.com/perchhq/perch/internal/config"
)

const sourceDockerfile = `FROM scratch
COPY hello.txt /srv/hello.txt
EXPOSE 9000/tcp
CMD ["/srv/app"]
`

// perch launch from source: in a directory with a Dockerfile and no
// --image, launch writes [build] dockerfile and takes the port from
// EXPOSE; with neither it says what to do. Where BuildKit can run (root,
// buildkitd, runc), perch deploy then builds that Dockerfile, pushes it
// to the control plane's registry and deploys the pushed image.
func TestLaunchFromSource(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	url, token := srv.URL(), srv.AdminToken()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	c := api.NewClient(url, token)
	hostStandIn(t, srv.Store(), c, "src")

	_, err := run(t, "", "", "launch", "--name", "nothing", "--dir", t.TempDir())
	wantErr(t, err, "no --image and no Dockerfile in", "pass --image REF", "add a Dockerfile")

	dir := t.TempDir()
	for p, s := range map[string]string{"Dockerfile": sourceDockerfile, "hello.txt": "hello from source\n"} {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := run(t, "", "", "launch", "--name", "src", "--dir", dir)
	if err != nil {
		t.Fatalf("launch: %v\n%s", err, out)
	}
	if !strings.Contains(out, "perch deploy builds it") {
		t.Errorf("launch did not say it builds the Dockerfile:\n%s", out)
	}
	cfg, _, err := config.Load(filepath.Join(dir, "perch.toml"), config.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Build.Dockerfile != "Dockerfile" || cfg.Build.Image != "" || cfg.HTTPService == nil || cfg.HTTPService.InternalPort != 9000 {
		t.Fatalf("perch.toml: build %+v, http_service %+v; want dockerfile = \"Dockerfile\", no image, internal_port 9000 (EXPOSE)", cfg.Build, cfg.HTTPService)
	}

	if os.Geteuid() != 0 {
		t.Skip("the deploy half needs root: buildkitd runs build steps with runc")
	}
	if _, err := build.Binary("buildkitd"); err != nil {
		t.Skip(err.Error())
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed")
	}
	// Started here, so the test can stop it: deploy finds it running
	// (same state dir, same plain-HTTP registry) and uses it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bkDir, err := build.StateDir()
	if err != nil {
		t.Fatal(err)
	}
	registryHost := strings.TrimPrefix(url, "http://")
	d, err := build.Start(ctx, bkDir, []string{registryHost}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)

	out, err = run(t, dir, "", "deploy", "--smoke-window", "0", "--wait-timeout", "20s")
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	t.Logf("deploy:\n%s", out)
	if strings.Contains(out, "Started the local builder") {
		t.Errorf("deploy started a second buildkitd:\n%s", out)
	}
	ms, err := c.ListMachines(ctx, "src", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(live(ms)) != 1 {
		t.Fatalf("%d machines after deploy, want 1\n%s", len(live(ms)), out)
	}
	img := live(ms)[0].Config.Image
	if !strings.HasPrefix(img, registryHost+"/src:deployment-") || !strings.Contains(out, "Built and pushed "+img) {
		t.Fatalf("machine runs %q; want the image deploy built, %s/src:deployment-...\n%s", img, registryHost, out)
	}
	ref, err := name.ParseReference(img, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(ref, remote.WithAuth(&authn.Basic{Username: "x", Password: token}), remote.WithContext(ctx)); err != nil {
		t.Errorf("the deployed image is not in the control plane's registry: %v", err)
	}
}
