package devcluster_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/registry"
)

// TestBadInput: every kind of bad input gets a clear error and loses
// nothing.
func TestBadInput(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "good")
	mustPerch(t, w, dir, "deploy")
	good, err := c.ListMachines(ctx, "good", "")
	if err != nil || len(good) != 1 {
		t.Fatalf("setup: %v %v", good, err)
	}
	// Each case must leave the good app's machine as it was.
	// (A machine a case destroyed may be listed as destroying for a moment
	// after its wait returns: the control plane removes its record once the
	// host has confirmed.)
	t.Cleanup(func() {
		deadline := time.Now().Add(15 * time.Second)
		for {
			ms, err := c.ListMachines(ctx, "good", "")
			if err == nil && len(ms) == 1 && ms[0].ID == good[0].ID && ms[0].State == api.StateStarted {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("the good app changed: %+v %v", ms, err)
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("unknown region", func(t *testing.T) {
		_, err := c.CreateMachine(ctx, "good", api.CreateMachineRequest{Region: "xyz", Config: api.MachineConfig{Image: ref}})
		wantErr(t, err, 400, `unknown region "xyz"`, "iad")
		d := t.TempDir()
		out, err := perch(t, w, d, "launch", "--image", ref, "--regions", "iad,xyz", "--name", "badregion")
		if err == nil {
			t.Fatalf("launch with an unknown region succeeded:\n%s", out)
		}
		if !strings.Contains(out, "xyz") {
			t.Errorf("error does not name the region: %s", out)
		}
		if _, err := c.GetApp(ctx, "badregion"); err == nil {
			t.Errorf("launch failed but left the app behind")
		}
	})

	t.Run("no host in a known region", func(t *testing.T) {
		_, err := c.CreateMachine(ctx, "good", api.CreateMachineRequest{Region: "syd", Config: api.MachineConfig{Image: ref}})
		wantErr(t, err, 422, "no host in region syd", "iad")
	})

	t.Run("more memory than any host has", func(t *testing.T) {
		_, err := c.CreateMachine(ctx, "good", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: ref, Guest: api.Guest{MemoryMB: 10 << 20}}})
		wantErr(t, err, 422, "region iad", "10485760 MB")
	})

	t.Run("image that does not exist", func(t *testing.T) {
		d := writeToml(t, "good", w.Info().Registry+"/nope:v1")
		out, err := perch(t, w, d, "deploy")
		if err == nil {
			t.Fatalf("deploy of a missing image succeeded:\n%s", out)
		}
		if !strings.Contains(out, "not found") || !strings.Contains(out, "nope:v1") {
			t.Errorf("deploy error does not say the image was not found: %s", out)
		}
	})

	t.Run("registry that refuses", func(t *testing.T) {
		reg, err := registry.NewStandalone(t.TempDir(), registry.TokenFunc(func(string) bool { return false }), registry.Options{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(reg.Close)
		srv := httptest.NewServer(reg)
		t.Cleanup(srv.Close)
		d := writeToml(t, "good", strings.TrimPrefix(srv.URL, "http://")+"/private:v1")
		out, err := perch(t, w, d, "deploy")
		if err == nil {
			t.Fatalf("deploy from a refusing registry succeeded:\n%s", out)
		}
		if !strings.Contains(strings.ToLower(out), "refused") && !strings.Contains(strings.ToLower(out), "unauthorized") {
			t.Errorf("deploy error does not say the registry refused: %s", out)
		}
	})

	t.Run("malformed perch.toml", func(t *testing.T) {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, "perch.toml"), []byte("app = \"good\"\n[http_service]\ninternal_port = 0\n"), 0o644)
		out, err := perch(t, w, d, "deploy")
		if err == nil || !strings.Contains(out, "perch.toml") || !strings.Contains(out, "line 3") || !strings.Contains(out, "internal_port") {
			t.Errorf("want an error naming perch.toml line 3 and internal_port, got %v:\n%s", err, out)
		}
		os.WriteFile(filepath.Join(d, "perch.toml"), []byte("app = \"good\"\n[http_service\n"), 0o644)
		out, err = perch(t, w, d, "deploy")
		if err == nil || !strings.Contains(out, "line 2") {
			t.Errorf("want a syntax error at line 2, got %v:\n%s", err, out)
		}
	})

	t.Run("app name already taken", func(t *testing.T) {
		out, err := perch(t, w, t.TempDir(), "launch", "--image", ref, "--regions", "iad", "--name", "good")
		if err == nil || !strings.Contains(out, "taken") {
			t.Errorf("want name taken, got %v:\n%s", err, out)
		}
	})

	t.Run("machine over its memory", func(t *testing.T) {
		m, err := c.CreateMachine(ctx, "good", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
			Image: ref, Env: map[string]string{"HELLO_ALLOC_MB": "256"},
			Guest:   api.Guest{MemoryMB: 64},
			Restart: api.Restart{Policy: api.RestartNo},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "good", m.ID, api.StateStopped, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		got, _ := c.GetMachine(ctx, "good", m.ID)
		if !got.OOMKilled || got.ExitCode == nil || *got.ExitCode != 137 {
			t.Errorf("machine: state %s exit %v oom %v; want stopped by the OOM killer, exit code 137", got.State, got.ExitCode, got.OOMKilled)
		}
		if out := mustPerch(t, w, dir, "status"); !strings.Contains(out, "out of memory") {
			t.Errorf("perch status does not say the machine ran out of memory:\n%s", out)
		}
		if out := mustPerch(t, w, dir, "machine", "status", m.ID, "-a", "good"); !strings.Contains(out, "137 (out of memory)") {
			t.Errorf("perch machine status does not say out of memory:\n%s", out)
		}
		if err := c.DestroyMachine(ctx, "good", m.ID, true); err != nil {
			t.Error(err)
		}
	})

	t.Run("missing or wrong token", func(t *testing.T) {
		for _, tok := range []string{"", "perch_wrong"} {
			_, err := api.NewClient(w.Info().APIURL, tok).ListApps(ctx)
			wantErr(t, err, 401, "token")
		}
		out, err := perchEnv(t, w, t.TempDir(), []string{"PERCH_API_TOKEN=perch_wrong"}, "apps", "list")
		if err == nil || !strings.Contains(out, "token") {
			t.Errorf("want a token error from the CLI, got %v:\n%s", err, out)
		}
	})

	t.Run("process that exits at once", func(t *testing.T) {
		m, err := c.CreateMachine(ctx, "good", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
			Image: ref, Env: map[string]string{"HELLO_CRASH": "cannot open database"},
			Restart: api.Restart{Policy: api.RestartOnFailure, MaxRetries: 2},
		}})
		if err != nil {
			t.Fatal(err)
		}
		// It starts, exits with 2, is restarted twice with backoff, then
		// fails for good.
		if err := c.WaitMachine(ctx, "good", m.ID, api.StateFailed, 60*time.Second); err != nil {
			t.Fatal(err)
		}
		got, _ := c.GetMachine(ctx, "good", m.ID)
		if got.State != api.StateFailed || got.ExitCode == nil || *got.ExitCode != 2 {
			t.Errorf("machine: state %s exit %v, want failed with exit code 2", got.State, got.ExitCode)
		}
		if len(got.LastLogs) == 0 || got.LastLogs[len(got.LastLogs)-1] != "cannot open database" {
			t.Errorf("machine's last log lines: %q, want the app's last line", got.LastLogs)
		}
		// Waiting for started now says why it will not start.
		err = c.WaitMachine(ctx, "good", m.ID, api.StateStarted, 5*time.Second)
		wantErr(t, err, 409, "exit code 2", "cannot open database")
		out := mustPerch(t, w, dir, "status")
		if !strings.Contains(out, "failed") || !strings.Contains(out, "cannot open database") || !strings.Contains(out, "2") {
			t.Errorf("perch status does not show the failure, exit code and log line:\n%s", out)
		}
		out = mustPerch(t, w, dir, "status", "--json")
		var st statusJSON
		_ = json.Unmarshal([]byte(jsonPart(out)), &st)
		found := false
		for _, x := range st.Machines {
			if x.ID == m.ID && x.State == api.StateFailed {
				found = true
			}
		}
		if !found {
			t.Errorf("perch status --json lacks the failed machine")
		}
		if err := c.DestroyMachine(ctx, "good", m.ID, true); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "good", m.ID, api.StateDestroyed, 30*time.Second); err != nil && !api.IsNotFound(err) {
			t.Fatal(err)
		}
	})
}

func wantErr(t *testing.T, err error, status int, contains ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error with status %d, got none", status)
	}
	var he *api.HTTPError
	if !asHTTPError(err, &he) || he.StatusCode != status {
		t.Errorf("want status %d, got %v", status, err)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
}

func writeToml(t *testing.T, app, image string) string {
	t.Helper()
	d := t.TempDir()
	toml := "app = \"" + app + "\"\nprimary_region = \"iad\"\nregions = [\"iad\"]\n[build]\nimage = \"" + image + "\"\n[http_service]\ninternal_port = 8080\n"
	if err := os.WriteFile(filepath.Join(d, "perch.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}
