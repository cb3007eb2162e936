package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCredentialsStoredPrivately(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv(envAPIURL, "")
	t.Setenv(envAPIToken, "")
	path, err := credentialsPath()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "perch", "config.json"); path != want {
		t.Fatalf("credentialsPath = %s, want %s", path, want)
	}
	want := credentials{APIURL: "http://127.0.0.1:4280", Token: "s3cret"}
	if err := saveCredentials(path, want); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := st.Mode().Perm(); mode != 0o600 {
		t.Errorf("config file mode = %o, want 600 (it holds a token)", mode)
	}
	got, err := currentCredentials()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("credentials (-want +got):\n%s", diff)
	}

	// Saving again replaces the file and leaves no temporary behind.
	want.Token = "other"
	if err := saveCredentials(path, want); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("config dir holds %d files, want only config.json", len(entries))
	}
}

func TestCredentialsEnvOverrides(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	path := filepath.Join(dir, "perch", "config.json")
	if err := saveCredentials(path, credentials{APIURL: "http://stored:4280", Token: "stored"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envAPIURL, "")
	t.Setenv(envAPIToken, "from-env")
	got, err := currentCredentials()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(credentials{APIURL: "http://stored:4280", Token: "from-env"}, got); diff != "" {
		t.Errorf("token from env (-want +got):\n%s", diff)
	}
	t.Setenv(envAPIURL, "http://127.0.0.2:4280")
	got, _ = currentCredentials()
	if diff := cmp.Diff(credentials{APIURL: "http://127.0.0.2:4280", Token: "from-env"}, got); diff != "" {
		t.Errorf("both from env (-want +got):\n%s", diff)
	}
}

func TestNotLoggedIn(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv(envAPIURL, "")
	t.Setenv(envAPIToken, "")
	_, err := currentCredentials()
	if err == nil || !strings.Contains(err.Error(), "perch auth login") {
		t.Errorf("err = %v, want it to say to run perch auth login", err)
	}
}

func TestReadDevWorld(t *testing.T) {
	dir := t.TempDir()
	const js = `{"api_url": "http://127.0.0.1:4280", "token": "tok", "registry": "127.0.0.1:4280",
		"regions": [{"code": "iad", "edge_addr": "127.0.1.1:80"}, {"code": "ams", "edge_addr": "127.0.1.2:80"}],
		"something_new": true}`
	if err := os.WriteFile(filepath.Join(dir, "world.json"), []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readDevWorld(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := &devWorld{
		APIURL: "http://127.0.0.1:4280", Token: "tok", Registry: "127.0.0.1:4280",
		Regions: []devWorldRegion{{"iad", "127.0.1.1:80"}, {"ams", "127.0.1.2:80"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("world (-want +got):\n%s", diff)
	}

	if u := got.apiURLs(); u != "http://127.0.0.1:4280" {
		t.Errorf("API URLs of a world without servers[] = %q, want its api_url", u)
	}

	// A world of three servers (perch dev up --servers 3): the CLI logs in
	// to all three, and so fails over between them.
	three := t.TempDir()
	os.WriteFile(filepath.Join(three, "world.json"), []byte(`{"api_url": "http://127.0.0.1:4280", "token": "tok",
		"servers": [{"name": "s1", "api_url": "http://127.0.0.1:4280", "pid": 10},
			{"name": "s2", "api_url": "http://127.0.0.1:4290", "pid": 11}, {"name": "s3", "api_url": "http://127.0.0.1:4291", "pid": 12}]}`), 0o600)
	got, err = readDevWorld(three)
	if err != nil {
		t.Fatal(err)
	}
	if u, want := got.apiURLs(), "http://127.0.0.1:4280,http://127.0.0.1:4290,http://127.0.0.1:4291"; u != want {
		t.Errorf("API URLs of a world of three servers = %q, want %q", u, want)
	}

	_, err = readDevWorld(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "perch dev up") {
		t.Errorf("missing world: err = %v, want it to say to run perch dev up", err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "world.json"), []byte(`{"api_url": ""}`), 0o600)
	if _, err := readDevWorld(bad); err == nil {
		t.Error("world without api_url or token: no error")
	}
}

func TestDefaultDevDir(t *testing.T) {
	t.Setenv(envDevDir, "")
	t.Setenv("XDG_STATE_HOME", "/state")
	if got, _ := defaultDevDir(); got != "/state/perch/dev" {
		t.Errorf("with XDG_STATE_HOME: %s", got)
	}
	t.Setenv(envDevDir, "/w")
	if got, _ := defaultDevDir(); got != "/w" {
		t.Errorf("with PERCH_DEV_DIR: %s", got)
	}
	t.Setenv(envDevDir, "")
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got, _ := defaultDevDir(); got != "/home/u/.local/state/perch/dev" {
		t.Errorf("default: %s", got)
	}
}
