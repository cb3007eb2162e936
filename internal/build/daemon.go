package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
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
	return "", fmt.Errorf("%s is not installed (not on PATH, not in %s): run scripts/deps.sh, which builds it from github.com/moby/buildkit", name, BinDir)
}

// Start returns the buildkitd serving dir, starting one if none answers.
// Concurrent callers (two deploys) are serialised by a lock file, so only
// one daemon runs per dir. The daemon outlives the caller, keeping its
// cache warm for the next build; Stop ends one this process started.
func Start(ctx context.Context, dir string, log *slog.Logger) (*Daemon, error) {
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
	if d.answers(ctx, time.Second) {
		return d, nil
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
	cmd := exec.Command(bin,
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
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
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
	p, err := os.FindProcess(d.pid)
	if err != nil {
		return
	}
	p.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(d.pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if syscall.Kill(d.pid, 0) == nil {
		p.Kill()
	}
	d.pid = 0
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
