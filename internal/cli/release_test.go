package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/perchhq/perch/internal/store"
)

// [deploy.release_command_vm]: the release command's machine gets that
// size (and the app's runtime), the app's machines their own.
func TestReleaseCommandVMSize(t *testing.T) {
	loggedOut(t)
	srv := startServerWith(t)
	url, token := srv.URL(), srv.AdminToken()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, token)
	c := api.NewClient(url, token)
	if _, err := c.CreateApp(context.Background(), api.CreateAppRequest{AppName: "rel"}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	guests := map[string]api.Guest{} // by process group
	hostStandInAs(t, srv.Store(), c, "rel", api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 8, MemoryMB: 8192}, func(sp store.MachineSpec) {
		mu.Lock()
		guests[sp.Config.Metadata[config.MetaProcessGroup]] = sp.Config.Guest
		mu.Unlock()
	})
	dir := t.TempDir()
	toml := `app = "rel"
primary_region = "iad"
[build]
  image = "127.0.0.1:1/rel:1"
[deploy]
  release_command = "bin/migrate"
  [deploy.release_command_vm]
    size = "shared-cpu-2x"
    memory = "1gb"
`
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, "", "deploy", "--smoke-window", "0", "--wait-timeout", "20s")
	if err != nil {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Running release command in iad: bin/migrate (timeout 5m0s, shared, 2 CPU, 1024 MB)") {
		t.Errorf("deploy output does not show the release machine's size:\n%s", out)
	}
	mu.Lock()
	defer mu.Unlock()
	rel, app := guests[releaseGroup], guests[config.DefaultProcessGroup]
	if rel.CPUs != 2 || rel.MemoryMB != 1024 || rel.Runtime != app.Runtime {
		t.Errorf("release machine guest %+v; want 2 CPUs, 1024 MB, the app's runtime %q", rel, app.Runtime)
	}
	if app.CPUs != 1 || app.MemoryMB != 256 {
		t.Errorf("app machine guest %+v; want the app's own 1 CPU, 256 MB", app)
	}
}
