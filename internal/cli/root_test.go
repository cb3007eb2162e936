package cli

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// run runs the perch command with args in dir and returns its output.
func run(t *testing.T, dir, stdin string, args ...string) (string, error) {
	t.Helper()
	if dir != "" {
		t.Chdir(dir)
	}
	root := NewRoot("test")
	// Rollouts print from a goroutine per machine, as os.Stdout allows.
	var out lockedBuffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loggedOut makes sure no login from the developer's machine is used.
func loggedOut(t *testing.T) {
	t.Helper()
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	t.Setenv(envAPIURL, "")
	t.Setenv(envAPIToken, "")
	t.Setenv(envDevDir, "")
}

func wantErr(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
}

func TestReadCommandsHaveJSON(t *testing.T) {
	root := NewRoot("test")
	for _, path := range [][]string{
		{"status"}, {"logs"}, {"apps", "list"}, {"machine", "list"}, {"machine", "status"}, {"regions"}, {"hosts"},
	} {
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatalf("%v: %v", path, err)
		}
		if cmd.Flags().Lookup("json") == nil {
			t.Errorf("perch %s has no --json", strings.Join(path, " "))
		}
	}
}

func TestAppsDestroyNeedsConfirmation(t *testing.T) {
	loggedOut(t)
	_, err := run(t, "", "", "apps", "destroy", "hello")
	wantErr(t, err, "--yes")

	old := isTerminal
	t.Cleanup(func() { isTerminal = old })
	isTerminal = func(io.Reader) bool { return true }
	out, err := run(t, "", "hell\n", "apps", "destroy", "hello")
	wantErr(t, err, "not confirmed")
	if !strings.Contains(out, `Type "hello"`) {
		t.Errorf("prompt = %q, want it to ask for the app name", out)
	}
	// The right name gets past the question, to the (absent) login.
	_, err = run(t, "", "hello\n", "apps", "destroy", "hello")
	wantErr(t, err, "not logged in")
}

func TestHostsRemoveNeedsConfirmation(t *testing.T) {
	loggedOut(t)
	_, err := run(t, "", "", "hosts", "remove", "iad-1234")
	wantErr(t, err, "--yes")
	_, err = run(t, "", "", "hosts", "remove", "iad-1234", "--yes")
	wantErr(t, err, "not logged in")
}

func TestLoginErrors(t *testing.T) {
	loggedOut(t)
	_, err := run(t, "", "", "auth", "login")
	wantErr(t, err, "no dev world", "perch dev up", "--api")
	_, err = run(t, "", "", "auth", "login", "--dev", t.TempDir())
	wantErr(t, err, "no dev world")
	_, err = run(t, "", "", "auth", "login", "--api", "http://127.0.0.1:1")
	wantErr(t, err, "--token")
}

func TestUnreachableServer(t *testing.T) {
	loggedOut(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()
	t.Setenv(envAPIURL, url)
	t.Setenv(envAPIToken, "tok")
	_, err = run(t, "", "", "apps", "list")
	wantErr(t, err, url, "perch server", "perch auth login")
}

func TestLaunchKeepsExistingConfig(t *testing.T) {
	loggedOut(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "perch.toml")
	if err := os.WriteFile(path, []byte("app = \"mine\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := run(t, "", "", "launch", "--image", "x", "--dir", dir)
	wantErr(t, err, "already exists", "--force")
	b, _ := os.ReadFile(path)
	if string(b) != "app = \"mine\"\n" {
		t.Errorf("perch.toml changed to %q", b)
	}
}

func TestWhichApp(t *testing.T) {
	loggedOut(t)
	for _, args := range [][]string{{"status"}, {"logs"}, {"machine", "list"}} {
		_, err := run(t, t.TempDir(), "", args...)
		wantErr(t, err, "--app")
	}
}

func TestGeneratedNamesAreValidAppNames(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	for i := range 50 {
		n := i
		name := generateName(func(k int) int { return (n * 7919) % k })
		if !valid.MatchString(name) || strings.Count(name, "-") != 2 {
			t.Errorf("generated name %q is not adjective-noun-NNNN", name)
		}
	}
}

func TestDeployNeedsConfigAndImage(t *testing.T) {
	loggedOut(t)
	dir := t.TempDir()
	_, err := run(t, dir, "", "deploy")
	wantErr(t, err, "perch.toml", "perch launch")

	os.WriteFile(filepath.Join(dir, "perch.toml"), []byte("app = \"hello\"\nprimary_region = \"iad\"\n"), 0o644)
	_, err = run(t, dir, "", "deploy")
	wantErr(t, err, "no image", "--image")
}

func TestScaleCountValidates(t *testing.T) {
	loggedOut(t)
	_, err := run(t, t.TempDir(), "", "scale", "count", "two", "--app", "hello")
	wantErr(t, err, `"two" is not a count`, "GROUP=N")
	_, err = run(t, t.TempDir(), "", "scale", "count", "web=2", "3", "--app", "hello")
	wantErr(t, err, "give one N, or a GROUP=N per process group")
	_, err = run(t, t.TempDir(), "", "scale", "count", "web=1", "web=2", "--app", "hello")
	wantErr(t, err, "process group web is given twice")
	_, err = run(t, t.TempDir(), "", "scale", "count", "2")
	wantErr(t, err, "--app")
}
