package heroku

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// dyno runs the launcher for typ over a fake image root: /app with a
// .profile.d script and a .profile, and the process types.
func dyno(t *testing.T, root, typ string, env ...string) *exec.Cmd {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	cmd := exec.Command("bash", filepath.Join(root, "dyno"), typ)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PERCH_HEROKU_ROOT=" + root}, env...)
	return cmd
}

func fakeRoot(t *testing.T, types map[string]string) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"dyno":                   launcher,
		"app/.profile.d/a.sh":    "export FROM_PROFILE_D=yes\nexport ORDER=profile.d\n",
		"app/.profile.d/skip.rb": "export ORDER=wrong\n",
		"app/.profile":           "export ORDER=\"$ORDER,profile\"\n",
	}
	for typ, c := range types {
		files["perch/heroku/process-types/"+typ] = c
	}
	for name, data := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The launcher sets a dyno's environment, sources .profile.d/*.sh before
// .profile, runs the command in /app and exits with its status.
func TestLauncherEnvironment(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"web":     `echo "$FROM_PROFILE_D $ORDER $HOME $PORT $DYNO $PS $(pwd) $GREETING"`,
		"release": "echo migrating; exit 3",
	})
	out, err := dyno(t, root, "web", "GREETING=hi").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	app := filepath.Join(root, "app")
	want := strings.Join([]string{"yes", "profile.d,profile", app, "5000", "web.1", "web.1", app, "hi"}, " ")
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("web printed\n%q\nwant\n%q", got, want)
	}
	out, _ = dyno(t, root, "web", "PORT=8080", "PERCH_DYNO_INDEX=3").CombinedOutput()
	if !strings.Contains(string(out), " 8080 web.3 web.3 ") {
		t.Errorf("PORT and the dyno's number from the env: %q", out)
	}
	err = dyno(t, root, "release").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("a release command exiting 3: %v; want exit status 3", err)
	}
	out, err = dyno(t, root, "clock").CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 127 || !strings.Contains(string(out), `no process type "clock"; it has: release web`) {
		t.Errorf("unknown process type: %v %q", err, out)
	}
}

// SIGTERM to the launcher reaches every process of the command (as
// Heroku signals a whole dyno), and the launcher exits once it has.
func TestLauncherForwardsSIGTERM(t *testing.T) {
	root := fakeRoot(t, map[string]string{
		"worker": `trap 'echo stopping >"$HOME/term"; exit 0' TERM; echo up >"$HOME/started"; while :; do sleep 0.2; done`,
	})
	cmd := dyno(t, root, "worker")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(root, "app", "started")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the worker did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("launcher after SIGTERM: %v; want the command's status 0", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the launcher did not stop on SIGTERM")
	}
	if b, err := os.ReadFile(filepath.Join(root, "app", "term")); err != nil || string(b) != "stopping\n" {
		t.Errorf("the command did not get SIGTERM: %q %v", b, err)
	}
}

// As a machine's PID 1 (a PID namespace of its own), the launcher still
// stops a command that has no SIGTERM handler, such as sleep: the kernel
// would drop SIGTERM sent to such a PID 1, and the machine would wait out
// its kill_timeout for SIGKILL.
func TestLauncherAsPID1StopsOnSIGTERM(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace (unshare)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare (util-linux)")
	}
	root := fakeRoot(t, map[string]string{"worker": "sleep 600"})
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "bash", filepath.Join(root, "dyno"), "worker")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PERCH_HEROKU_ROOT=" + root}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer cmd.Process.Kill()
	// The launcher is unshare's child; it is PID 1 of the new namespace.
	var pid1 int
	deadline := time.Now().Add(20 * time.Second)
	for pid1 == 0 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			// Wait until it runs the command (its own child exists).
			c, _ := os.ReadFile("/proc/" + f[0] + "/task/" + f[0] + "/children")
			if len(strings.Fields(string(c))) > 0 {
				pid1, _ = strconv.Atoi(f[0])
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the launcher did not start its command")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("SIGTERM to the launcher as PID 1 did not stop `sleep 600`")
	}
}
