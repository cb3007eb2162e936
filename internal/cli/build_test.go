package cli

import (
	"os"
	"path/filepath"
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
