package devcluster_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/store/storetest"
)

// TestSecretsReachMachinesAndNothingElse: a secret set with the CLI
// restarts the app's machines with it in their environment (over
// [env]) and in a file (config.files), while its value is in none of
// perch secrets list, perch logs, the control plane's and the agent's
// logs (both at debug), nor any raw entry of any bucket of the store.
func TestSecretsReachMachinesAndNothingElse(t *testing.T) {
	t.Setenv("PERCH_LOG", "debug") // the agents' log level
	const value = "pw-1b7e0c55-do-not-leak"
	serverLog := newLockedBuffer()
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"},
		Log: slog.New(slog.NewTextHandler(serverLog, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctx := context.Background()
	c := w.Client()
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", "sec")
	appendFile(t, filepath.Join(dir, "perch.toml"), "\n[env]\nDATABASE_URL = \"from-env\"\n")
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	envIs := func(name, want string) {
		t.Helper()
		eventually(t, 30*time.Second, name+" in the machine's environment", func() (bool, string) {
			code, body, _, err := get(edge, "sec", "/env/"+name)
			return err == nil && code == 200 && strings.TrimSpace(body) == want, body
		})
	}
	envIs("DATABASE_URL", "from-env")

	// Bad input: refused with what to do, nothing written.
	for _, tc := range []struct{ env, want string }{
		{"BIG=" + strings.Repeat("x", 64<<10+1) + "\n", "at most 65536 bytes"},
		{"9LIVES=" + value + "\n", "not an environment variable name"},
		{"FLY_REGION=" + value + "\n", "reserved"},
	} {
		out, err := perchStdin(t, w, dir, tc.env, "secrets", "import")
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("secrets import of %.20s...: %v, want an error saying %q", tc.env, err, tc.want)
		}
		if strings.Contains(out, value) {
			t.Errorf("the refusal shows the value: %s", out)
		}
	}
	if out := mustPerch(t, w, dir, "secrets", "list"); strings.Contains(out, "BIG") || strings.Contains(out, "9LIVES") {
		t.Errorf("a refused secret was stored:\n%s", out)
	}

	// set: a rolling deploy of the current release; the secret wins over [env].
	before, _ := liveMachines(ctx, w, "sec")
	out := mustPerch(t, w, dir, "secrets", "set", "DATABASE_URL="+value, "--smoke-window", "1s")
	if !strings.Contains(out, "Deployed sec") {
		t.Errorf("secrets set did not restart the machines:\n%s", out)
	}
	envIs("DATABASE_URL", value)
	after, _ := liveMachines(ctx, w, "sec")
	if len(after) != 1 || len(before) != 1 || after[0].ID == before[0].ID {
		t.Errorf("machines before %v, after %v: want one new machine", ids(before), ids(after))
	}

	// --stage changes nothing running.
	mustPerch(t, w, dir, "secrets", "set", "STAGED=later", "--stage")
	if ms, _ := liveMachines(ctx, w, "sec"); len(ms) != 1 || ms[0].InstanceID != after[0].InstanceID {
		t.Errorf("--stage restarted machines: %v", ms)
	}
	envIs("STAGED", "")

	// config.files: one from a secret, one raw, written before start.
	m := after[0]
	cfg := m.Config
	raw := base64.StdEncoding.EncodeToString([]byte("raw-content"))
	cfg.Files = []api.File{
		{GuestPath: "/etc/app/db.url", SecretName: ptr("DATABASE_URL"), Mode: 0o600},
		{GuestPath: "/etc/app/raw.txt", RawValue: &raw},
	}
	if _, err := c.UpdateMachine(ctx, "sec", m.ID, api.CreateMachineRequest{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"/file/etc/app/db.url": "0600 " + value, "/file/etc/app/raw.txt": "0644 raw-content"} {
		eventually(t, 30*time.Second, path, func() (bool, string) {
			code, body, _, err := get(edge, "sec", path)
			return err == nil && code == 200 && body == want, body
		})
	}
	envIs("STAGED", "later") // the update carried the staged secret too

	// import from stdin (dotenv) and unset, staged.
	cmdOut, err := perchStdin(t, w, dir, "# comment\nexport A=\"x y\"\nB='z'\n", "secrets", "import", "--stage")
	if err != nil {
		t.Fatalf("secrets import: %v\n%s", err, cmdOut)
	}
	mustPerch(t, w, dir, "secrets", "unset", "B", "STAGED", "--stage")
	list := mustPerch(t, w, dir, "secrets", "list")
	for _, want := range []string{"NAME", "DIGEST", "DATABASE_URL", "A"} {
		if !strings.Contains(list, want) {
			t.Errorf("secrets list lacks %s:\n%s", want, list)
		}
	}
	if strings.Contains(list, "STAGED") || strings.Contains(list, "\nB ") {
		t.Errorf("unset secrets still listed:\n%s", list)
	}

	// The value is nowhere it should not be.
	leaks := map[string]string{
		"perch secrets list":        list + mustPerch(t, w, dir, "secrets", "list", "--json"),
		"perch logs":                mustPerch(t, w, dir, "logs"),
		"perch status":              mustPerch(t, w, dir, "status", "--json"),
		"the control plane's logs":  serverLog.String(),
		"the machine API's answers": mustPerch(t, w, dir, "machine", "list", "--json"),
	}
	logs, _ := filepath.Glob(filepath.Join(w.Info().Dir, "logs", "*"))
	for _, p := range logs {
		b, _ := os.ReadFile(p)
		leaks[p] = string(b)
	}
	agentLog := leaks[filepath.Join(w.Info().Dir, "logs", "agent-iad.log")]
	if !strings.Contains(agentLog, "level=DEBUG") {
		t.Errorf("the agent's log is not at debug: %v", logs)
	}
	// The host's NATS user allowed everything its agent and edge did.
	if i := strings.Index(strings.ToLower(agentLog), "permissions violation"); i >= 0 {
		t.Errorf("NATS refused the agent a subject: %.300s", agentLog[i:])
	}
	for where, text := range leaks {
		if strings.Contains(text, value) {
			t.Errorf("the secret's value is in %s", where)
		}
	}
	if where := storetest.Holds(t, w.Server().Store(), []byte(value)); where != "" {
		t.Errorf("the secret's value is in the clear in the store: %s", where)
	}
	noCredentialsInProcs(t, w)
}

// noCredentialsInProcs reads the command line and environment (what ps
// -eo args and /proc show any local user, and root) of the world's
// agents, shims and everything they started: none holds the admin token,
// a join token, a host credential or the NATS server's password.
func noCredentialsInProcs(t *testing.T, w *devcluster.World) {
	t.Helper()
	info := w.Info()
	secrets := map[string]string{"the admin token": w.AdminToken(), "the world's token": info.Token, "a join token": "perch_join_", "a host credential": api.HostCredentialPrefix}
	for _, r := range info.Regions {
		p := filepath.Join(r.StateDir, agent.CredentialFile)
		var c api.HostCredential
		if b, err := os.ReadFile(p); err != nil || json.Unmarshal(b, &c) != nil || c.Secret == "" {
			t.Fatalf("host credential %s: %v", p, err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("host credential %s has mode %v, want 0600", p, fi.Mode().Perm())
		}
		secrets["the host credential of "+c.HostID] = c.Secret
	}
	if b, err := os.ReadFile(filepath.Join(info.Dir, "server", "nats-token")); err == nil {
		secrets["the NATS server password"] = strings.TrimSpace(string(b))
	}
	// The agents, and every process whose parent is one of ours or whose
	// command line names the world's directory (shims, runc, machines).
	ours := map[int]bool{}
	for _, r := range info.Regions {
		ours[r.PID] = true
	}
	type proc struct {
		pid, ppid int
		args      string
	}
	var procs []proc
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		cmdline, err2 := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || err2 != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		ppid, _ := strconv.Atoi(f[1])
		procs = append(procs, proc{pid, ppid, strings.ReplaceAll(string(cmdline), "\x00", " ")})
	}
	for changed := true; changed; {
		changed = false
		for _, p := range procs {
			if !ours[p.pid] && (ours[p.ppid] || strings.Contains(p.args, info.Dir)) {
				ours[p.pid], changed = true, true
			}
		}
	}
	checked := 0
	for _, p := range procs {
		if !ours[p.pid] {
			continue
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.pid))
		if err != nil {
			continue // exited meanwhile
		}
		checked++
		for what, s := range secrets {
			if s == "" {
				continue
			}
			if strings.Contains(p.args, s) {
				t.Errorf("%s is on the command line of pid %d: %.80s", what, p.pid, p.args)
			}
			if bytes.Contains(env, []byte(s)) {
				t.Errorf("%s is in the environment of pid %d (%.80s)", what, p.pid, p.args)
			}
		}
	}
	// What ps -eo args shows: no process on the host, ours or not, has
	// one of this world's own secrets (not the prefixes, which other
	// worlds' processes may have) on its command line.
	for _, p := range procs {
		for what, s := range secrets {
			if len(s) >= 16 && strings.Contains(p.args, s) { // the prefixes are shorter
				t.Errorf("ps -eo args: %s is on the command line of pid %d: %.80s", what, p.pid, p.args)
			}
		}
	}
	if checked < len(info.Regions)+1 {
		t.Errorf("checked %d processes: want at least the agents and a shim", checked)
	}
	t.Logf("no credential in the command line or environment of %d processes (agents, shims, runc, machines), nor on the command line of any of the host's %d processes", checked, len(procs))
}

func ids(ms []api.Machine) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// perchStdin runs the CLI with stdin.
func perchStdin(t *testing.T, w *devcluster.World, dir, stdin string, args ...string) (string, error) {
	t.Helper()
	info := w.Info()
	cmd := exec.Command(perchBin, args...)
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), "PERCH_API_URL="+info.APIURL, "PERCH_API_TOKEN="+info.Token, "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/.config")
	out, err := cmd.CombinedOutput()
	t.Logf("$ perch %s < stdin\n%s", strings.Join(args, " "), out)
	return string(out), err
}
