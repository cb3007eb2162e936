package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/buildkit/client"
	"golang.org/x/sys/unix"
)

// BinDir is where scripts/deps.sh installs buildkitd and buildctl when no
// other copy is on PATH.
const BinDir = "/usr/local/lib/perch/bin"

// Daemon is a local buildkitd: its socket, its state (the layer cache,
// kept between builds) and its log live in Dir.
type Daemon struct {
	Dir string
	// Addr is the socket's address, for Options.Addr.
	Addr string
	// Started is whether Start started it (false: one was running).
	Started bool
	pid     int
	exited  chan struct{} // closed once the process Start started is reaped
}

// StateDir is the per-user directory of the local builder:
// $PERCH_BUILDKIT_DIR, else $XDG_STATE_HOME/perch/buildkit, else
// ~/.local/state/perch/buildkit.
func StateDir() (string, error) {
	if d := os.Getenv("PERCH_BUILDKIT_DIR"); d != "" {
		return d, nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "perch", "buildkit"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("build: no state directory for buildkitd: set PERCH_BUILDKIT_DIR: %w", err)
	}
	return filepath.Join(home, ".local", "state", "perch", "buildkit"), nil
}

// Binary finds name (buildkitd, buildctl) on PATH or in BinDir.
func Binary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := filepath.Join(BinDir, name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s is not installed (not on PATH, not in %s): build it with: bash -c '. scripts/deps.sh && install_buildkit' (from Perch's source tree; docs/builds.md)", name, BinDir)
}

// Start returns the buildkitd serving dir, starting one if none answers.
// Concurrent callers (two deploys) are serialised by a lock file, so only
// one daemon runs per dir. The daemon outlives the caller, keeping its
// cache warm for the next build; Stop ends one this process started.
//
// insecure are registries (host:port) spoken to over plain HTTP, for FROM
// images (pushes say it per build); BuildKit does so for loopback ones by
// itself. They are in the daemon's config file, so a running daemon
// without one of them is restarted with it (its cache kept).
func Start(ctx context.Context, dir string, insecure []string, log *slog.Logger) (*Daemon, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	d := &Daemon{Dir: dir, Addr: "unix://" + filepath.Join(dir, "buildkitd.sock")}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("build: lock %s: %w", lock.Name(), err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	regsPath := filepath.Join(dir, "registries")
	known := readLines(regsPath)
	need := slices.Clone(known)
	for _, h := range insecure {
		if !loopback(h) && !slices.Contains(need, h) {
			need = append(need, h)
		}
	}
	if d.answers(ctx, time.Second) {
		if len(need) == len(known) {
			return d, nil
		}
		log.Info("restarting buildkitd for a plain-HTTP registry", "registries", need)
		if err := stopPIDFile(filepath.Join(dir, "buildkitd.pid")); err != nil {
			return nil, err
		}
	}
	bin, err := Binary("buildkitd")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("build: the local buildkitd runs its steps with runc and needs root: run perch deploy as root (rootless BuildKit is not set up)")
	}
	os.Remove(filepath.Join(dir, "buildkitd.sock"))
	logPath := filepath.Join(dir, "buildkitd.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer logf.Close()
	var conf strings.Builder
	for _, h := range need {
		fmt.Fprintf(&conf, "[registry.%q]\n  http = true\n  insecure = true\n", h)
	}
	confPath := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.WriteFile(regsPath, []byte(strings.Join(need, "\n")), 0o600); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	cmd := exec.Command(bin,
		"--config", confPath,
		"--addr", d.Addr,
		"--root", filepath.Join(dir, "root"),
		"--oci-worker=true", "--containerd-worker=false",
		"--oci-worker-platform", "linux/amd64",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not killed with the CLI's terminal
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("build: start %s: %w", bin, err)
	}
	d.pid, d.Started = cmd.Process.Pid, true
	if err := os.WriteFile(filepath.Join(dir, "buildkitd.pid"), []byte(strconv.Itoa(d.pid)), 0o600); err != nil {
		d.Stop()
		return nil, fmt.Errorf("build: %w", err)
	}
	exited := make(chan error, 1)
	d.exited = make(chan struct{})
	go func() { exited <- cmd.Wait(); close(d.exited) }()
	log.Info("started buildkitd", "pid", d.pid, "dir", dir)
	deadline := time.Now().Add(30 * time.Second)
	for !d.answers(ctx, time.Second) {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("build: buildkitd exited (%v); its log %s ends:\n%s", err, logPath, tailFile(logPath, 10))
		case <-ctx.Done():
			d.Stop()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.Stop()
			return nil, fmt.Errorf("build: buildkitd did not answer on %s within 30s; its log %s ends:\n%s", d.Addr, logPath, tailFile(logPath, 10))
		}
	}
	return d, nil
}

// answers reports whether a buildkitd answers on d.Addr with a worker.
func (d *Daemon) answers(ctx context.Context, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := client.New(ctx, d.Addr)
	if err != nil {
		return false
	}
	defer c.Close()
	ws, err := c.ListWorkers(ctx)
	return err == nil && len(ws) > 0
}

// Stop ends the daemon if Start started it, and waits for it to exit.
func (d *Daemon) Stop() {
	if d.pid == 0 {
		return
	}
	select {
	case <-d.exited: // gone already (restarted by another Start): its pid may be another process's now
	default:
		terminate(d.pid)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second): // unkillable (D state): leave it
		}
	}
	d.pid = 0
}

// StopDir ends the buildkitd serving dir that another perch process
// started (its pid file), if one runs, and waits for it to go.
func StopDir(dir string) error {
	path := filepath.Join(dir, "buildkitd.pid")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && !alive(pid) {
		return nil
	}
	return stopPIDFile(path)
}

// stopPIDFile ends the buildkitd whose pid the file holds (one another
// perch started), if that process is still a buildkitd.
func stopPIDFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("build: a buildkitd answers but %s is unreadable (%w): stop it, then deploy again", path, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("build: %s holds no pid: stop the running buildkitd, then deploy again", path)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmdline), "buildkitd") {
		return fmt.Errorf("build: process %d of %s is not buildkitd: stop the running buildkitd, then deploy again", pid, path)
	}
	terminate(pid)
	return nil
}

// terminate sends SIGTERM, waits up to 10 s for the process to go (it is
// a child here, or reaped by init), then SIGKILL.
func terminate(pid int) {
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		for deadline := time.Now().Add(5 * time.Second); alive(pid) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// loopback reports whether host (host:port) is a loopback address or
// localhost, which BuildKit speaks plain HTTP to without configuration.
func loopback(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func readLines(path string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
