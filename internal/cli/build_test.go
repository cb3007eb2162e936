package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/config"
)

// The Dockerfile is found next to perch.toml, wherever --config points,
// and handed to the builder as an absolute path (the context is
// perch.toml's directory, so a relative one would be joined twice).
func TestDockerfileFor(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "svc")
	if err := os.MkdirAll(filepath.Join(sub, "docker"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"Dockerfile", "docker/Dockerfile.prod"} {
		if err := os.WriteFile(filepath.Join(sub, f), []byte("FROM scratch\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(root)
	cfgPath := filepath.Join("svc", "perch.toml")
	if got := dockerfileFor(&config.Config{}, cfgPath); got != filepath.Join(sub, "Dockerfile") {
		t.Errorf("default: %q, want %s", got, filepath.Join(sub, "Dockerfile"))
	}
	if got := dockerfileFor(&config.Config{Build: config.Build{Dockerfile: "docker/Dockerfile.prod"}}, cfgPath); got != filepath.Join(sub, "docker", "Dockerfile.prod") {
		t.Errorf("[build] dockerfile: %q", got)
	}
	if got := dockerfileFor(&config.Config{Build: config.Build{Dockerfile: "nope"}}, cfgPath); got != "" {
		t.Errorf("missing Dockerfile: %q, want none (deploy then asks for an image)", got)
	}
}

// A perch.toml that asks for buildpacks and has no Dockerfile: perch
// deploy names the builder image they need and how to provide an image,
// before contacting anything.
func TestDeployBuildpacksSaysWhatItNeeds(t *testing.T) {
	dir := t.TempDir()
	toml := "app = 'bp'\n[build]\nbuilder = 'paketobuildpacks/builder:base'\nbuildpacks = ['gcr.io/paketo-buildpacks/go']\n"
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PERCH_API_URL", "http://127.0.0.1:1")
	t.Setenv("PERCH_API_TOKEN", "unused")
	out, err := run(t, dir, "", "deploy")
	if err == nil {
		t.Fatalf("deploy with buildpacks and no Dockerfile succeeded:\n%s", out)
	}
	for _, want := range []string{"builder image paketobuildpacks/builder:base", "pack build REGISTRY/APP:TAG --builder paketobuildpacks/builder:base --buildpack gcr.io/paketo-buildpacks/go --publish", "--image", "add a Dockerfile"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}
