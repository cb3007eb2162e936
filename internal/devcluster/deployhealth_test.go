package devcluster_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
)

// TestDeployWaitsForHealthChecks: with checks, a release counts only once
// its new machines pass them; a release whose checks fail is rolled back
// and the previous one keeps serving.
func TestDeployWaitsForHealthChecks(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "healthy")
	appendFile(t, filepath.Join(dir, "perch.toml"), `
[[http_service.checks]]
  interval = '1s'
  timeout = '500ms'
  grace_period = '1s'
  path = '/health'
`)
	out := mustPerch(t, w, dir, "deploy")
	if !strings.Contains(out, "ready") || !strings.Contains(out, "passed its smoke check") {
		t.Errorf("deploy did not wait for the checks:\n%s", out)
	}
	expectAnswer(t, edge, "healthy", "iad")
	before, err := w.Client().ListMachines(ctx, "healthy", "")
	if err != nil || len(before) != 1 {
		t.Fatalf("machines after the first deploy: %v %v", before, err)
	}

	// The next release starts but never passes its check.
	appendFile(t, filepath.Join(dir, "perch.toml"), "\n[env]\n  HELLO_UNHEALTHY = '1'\n")
	out, err = perch(t, w, dir, "deploy")
	if err == nil {
		t.Fatalf("a release failing its health checks deployed:\n%s", out)
	}
	if !strings.Contains(out, "critical") || !strings.Contains(out, "the app keeps running v1") {
		t.Errorf("deploy does not say the check failed and the old release stays:\n%s", out)
	}
	eventually(t, 20*time.Second, "the failed release's machine is destroyed, the old one kept", func() (bool, string) {
		after, _ := w.Client().ListMachines(ctx, "healthy", "")
		return len(after) == 1 && after[0].ID == before[0].ID, fmt.Sprint(len(after), " machines")
	})
	expectAnswer(t, edge, "healthy", "iad")
}
