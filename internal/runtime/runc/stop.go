package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// killWait bounds how long Stop and Destroy wait for a process to go after
// SIGKILL, which only a stuck kernel makes slow.
const killWait = 10 * time.Second

// Stop sends sig to the machine's process, and SIGKILL if it has not
// exited after timeout. The machine can be started again afterwards.
func (d *Driver) Stop(ctx context.Context, id string, sig syscall.Signal, timeout time.Duration) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	st, err := d.State(ctx, id)
	if err != nil {
		return err
	}
	if st.Status == runtime.StatusCreated && !machinedir.Exists(d.path(id, fileShim)) {
		return nil // never started
	}
	if st.Status == runtime.StatusSuspended {
		return nil
	}
	if st.Status == runtime.StatusExited {
		// A shim killed before it could detach the volumes' idmapped
		// binds leaves them holding the volumes' filesystems: the agent's
		// unmount after this stop would not end them, and the next mount
		// would be a second filesystem on the same image.
		unmapVolumes(d.dir(id)) // idmap.go
		return nil
	}
	if st.Pid > 0 && !handles(st.Pid, sig) {
		// The app is the container's PID 1, and the kernel drops a signal
		// PID 1 has no handler for. Anywhere else (a microVM, where init is
		// the app's parent; a plain Linux host) the signal would kill it at
		// once, so it is killed now rather than after the timeout.
		d.log.Info("machine's process has no handler for its stop signal, which PID 1 would ignore; killing it now",
			"id", id, "signal", sig)
		timeout = 0
	} else if err := d.kill(ctx, id, sig); err != nil {
		return fmt.Errorf("runc: stop %s: %w", id, err)
	}
	if timeout > 0 && d.waitExited(ctx, id, timeout) {
		unmapVolumes(d.dir(id)) // as above, should the shim have died meanwhile
		return nil
	}
	if timeout > 0 {
		d.log.Debug("machine did not stop in time; killing it", "id", id, "signal", sig, "timeout", timeout)
	}
	if err := d.kill(ctx, id, syscall.SIGKILL); err != nil {
		return fmt.Errorf("runc: stop %s: %w", id, err)
	}
	if !d.waitExited(ctx, id, killWait) {
		if ctx.Err() != nil {
			return fmt.Errorf("runc: stop %s: %w", id, ctx.Err())
		}
		return fmt.Errorf("runc: stop %s: process still running %v after SIGKILL", id, killWait)
	}
	unmapVolumes(d.dir(id))
	return nil
}

var _ runtime.Signaler = (*Driver)(nil)

// Signal sends the machine's process sig; a machine not running is left
// as it is.
func (d *Driver) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	if err := checkID(id); err != nil {
		return err
	}
	return d.kill(ctx, id, sig)
}

// kill signals the container unless it is already gone.
func (d *Driver) kill(ctx context.Context, id string, sig syscall.Signal) error {
	err := d.runcCmd(ctx, "kill", id, strconv.Itoa(int(sig)))
	if errNotRunning(err) {
		return nil
	}
	return err
}

// waitExited polls until the machine has exited, for at most timeout.
func (d *Driver) waitExited(ctx context.Context, id string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := d.Wait(ctx, id)
	return err == nil && st.Status == runtime.StatusExited
}

// Destroy kills the machine's process and removes its container, rootfs,
// network and directory. Destroying an unknown machine removes whatever
// is left of it and is not an error.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	return d.destroy(ctx, id)
}

func (d *Driver) destroy(ctx context.Context, id string) error {
	if err := d.killAll(ctx, id); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	if _, found, err := d.runcState(ctx, id); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	} else if found {
		if err := d.runcCmd(ctx, "delete", "--force", id); err != nil {
			return fmt.Errorf("runc: destroy %s: %w", id, err)
		}
	}
	unmapVolumes(d.dir(id)) // idmap.go: a shim killed before it could
	if err := d.unbindRoot(id); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	if err := unmountRootfs(d.path(id, dirRootfs)); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	if err := unmountDisk(d.dir(id)); err != nil { // disk.go
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	// Idmapped layers left by a create that died half way.
	lowers, _ := filepath.Glob(filepath.Join(d.path(id, dirLowers), "*"))
	for _, l := range lowers {
		if err := unmountRootfs(l); err != nil {
			return fmt.Errorf("runc: destroy %s: %w", id, err)
		}
	}
	if err := hostnet.Detach(id); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	if err := d.unpinNamespaces(id, ""); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	// Never remove through a mount: that would be the image's files.
	for _, p := range append(lowers, d.path(id, dirRootfs), d.path(id, dirDisk)) {
		if mounted, err := isMountPoint(p); err != nil || mounted {
			return fmt.Errorf("runc: destroy %s: %s still mounted (%v); not removing it", id, p, err)
		}
	}
	if r, err := d.readRecord(id); err == nil {
		releaseIDRange(r.UIDBase, d.dir(id))
	}
	if err := os.RemoveAll(d.dir(id)); err != nil {
		return fmt.Errorf("runc: destroy %s: %w", id, err)
	}
	d.log.Debug("machine destroyed", "id", id)
	return nil
}

// killAll kills the container and waits for its shim to be gone, so that
// nothing writes into the machine's directory while it is removed.
func (d *Driver) killAll(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		if err := d.kill(ctx, id, syscall.SIGKILL); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			// A container that runc has not made yet cannot be signalled;
			// the next round will find it.
			d.log.Debug("kill during destroy", "id", id, "err", err)
		}
		sh, alive := d.liveShim(id)
		if !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			// Last resort: without its shim, runc and the container get
			// reparented and are killed by the next round of runc kill.
			if p, err := os.FindProcess(sh.Pid); err == nil {
				p.Signal(syscall.SIGKILL)
			}
			return fmt.Errorf("shim %d still running after %v: %w", sh.Pid, killWait, ctx.Err())
		case <-tick.C:
		}
	}
}

// handles says whether process pid catches or ignores sig, read from the
// SigCgt and SigIgn masks of /proc/PID/status, or whether sig's default
// action is not to terminate (SIGCHLD and the like). If the status cannot
// be read it says yes: the caller then sends the signal as usual.
func handles(pid int, sig syscall.Signal) bool {
	switch sig {
	case syscall.SIGCHLD, syscall.SIGCONT, syscall.SIGURG, syscall.SIGWINCH,
		syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
		return true
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return true
	}
	bit := uint64(1) << (uint(sig) - 1)
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "SigCgt" && k != "SigIgn") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return true
		}
		if mask&bit != 0 {
			return true
		}
		found++
	}
	return found < 2
}
