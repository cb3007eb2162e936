package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// startTimeout bounds how long Start waits for runc to report the process
// running when ctx has no deadline.
const startTimeout = time.Minute

// Start runs the machine's process under a new shim and returns once runc
// has started it (or it has already exited; State then has its code).
func (d *Driver) Start(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if d.escape != nil {
		return fmt.Errorf("runc: start %s: %w", id, d.escape)
	}
	unlock := d.lock(id)
	defer unlock()
	r, err := d.readRecord(id)
	if err != nil {
		return err
	}
	if sh, ok := d.liveShim(id); ok {
		if !machinedir.Exists(d.path(id, fileExit)) {
			return d.waitStarted(ctx, id, sh.Pid, nil, nil) // already started or starting
		}
		// The last run's shim has recorded its exit and is on its way out.
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			return fmt.Errorf("runc: start %s: %w", id, err)
		}
	}
	// After a host reboot the mount and namespace are gone; make them again.
	if err := d.ensureRootfs(id, r); err != nil {
		return err
	}
	if r.UIDBase != 0 {
		if err := d.pinNamespaces(id, r.UIDBase, netnsPath(id, r.Spec.Net)); err != nil {
			return fmt.Errorf("runc: start %s: %w", id, err)
		}
	}
	if err := d.mapVolumes(id, r); err != nil { // idmap.go
		return fmt.Errorf("runc: start %s: %w", id, err)
	}
	if r.Spec.Net.Bridge != "" {
		if _, err := hostnet.Attach(id, r.Spec.Net); err != nil {
			return fmt.Errorf("runc: start %s: %w", id, err)
		}
	}
	// runc removes a container it ran to the end, but not one whose runc
	// was killed; such a leftover would refuse the new run.
	if _, found, err := d.runcState(ctx, id); err != nil {
		return fmt.Errorf("runc: start %s: %w", id, err)
	} else if found {
		if err := d.runcCmd(ctx, "delete", "--force", id); err != nil {
			return fmt.Errorf("runc: start %s: remove old container: %w", id, err)
		}
	}
	for _, name := range []string{fileExit, filePid} {
		if err := os.Remove(d.path(id, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("runc: start %s: %w", id, err)
		}
	}

	argv := append(d.shim[0:len(d.shim):len(d.shim)],
		"--runc", d.runc, "--root", d.runcRoot, "--id", id, "--dir", d.dir(id))
	resume := d.hasSnapshot(id)
	if resume {
		if err := os.MkdirAll(d.path(id, dirCriuWork), 0o700); err != nil {
			return fmt.Errorf("runc: start %s: %w", id, err)
		}
		argv = append(argv, "--restore", d.path(id, dirSnapshot))
		if r.UIDBase != 0 {
			if err := d.prepareRestore(id, r); err != nil { // suspendns.go
				d.finishRestore(id, r, 0)
				return errResume(id, err)
			}
		}
	}
	sh, exited, err := machinedir.StartShim(argv, d.path(id, fileShim))
	if err != nil {
		return fmt.Errorf("runc: start %s: %w", id, err)
	}
	d.log.Debug("machine starting", "id", id, "shim", sh.Pid, "resume", resume)
	var during func()
	if resume && r.UIDBase != 0 {
		during = d.restoreNet(id, r) // suspendns.go
	}
	if err := d.waitStarted(ctx, id, sh.Pid, exited, during); err != nil || !resume {
		return err
	}
	if machinedir.Exists(d.path(id, fileExit)) && !machinedir.Exists(d.path(id, filePid)) {
		// runc restore failed: the snapshot cannot be used, now or later.
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			d.log.Warn("shim of a failed restore still running", "id", id, "err", err)
		}
		logTail := criuLogTail(d.path(id, filepath.Join(dirCriuWork, fileRestoreLog)))
		if r.UIDBase != 0 {
			if err := d.finishRestore(id, r, 0); err != nil {
				d.log.Warn("undo the restore's namespace changes", "id", id, "err", err)
			}
		}
		if err := d.discardSnapshot(id); err != nil {
			return err
		}
		return errResume(id, fmt.Errorf("runc restore failed%s", logTail))
	}
	if r.UIDBase != 0 {
		pid, err := machinedir.ReadPid(d.path(id, filePid))
		if err == nil {
			err = d.finishRestore(id, r, pid)
		}
		if err != nil {
			return fmt.Errorf("runc: start %s: after the restore: %w", id, err)
		}
	}
	// Restored: the images are no longer needed.
	return d.removeSnapshot(id)
}

// waitStarted waits until runc has written the container's pid, or the
// run is over, calling during (if not nil) at each look.
func (d *Driver) waitStarted(ctx context.Context, id string, shimPid int, exited <-chan struct{}, during func()) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if during != nil {
			during()
		}
		if machinedir.Exists(d.path(id, filePid)) || machinedir.Exists(d.path(id, fileExit)) {
			return nil
		}
		if machinedir.Gone(exited, func() bool { return d.shimAlive(id, shimPid) }) {
			if machinedir.Exists(d.path(id, fileExit)) {
				return nil
			}
			return fmt.Errorf("runc: start %s: the shim exited without recording an exit code; see %s", id, d.path(id, fileStderr))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("runc: start %s: waiting for the process to run: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitShimGone waits for a shim that has finished its work to exit.
func (d *Driver) waitShimGone(ctx context.Context, id string, pid int) error {
	return machinedir.WaitGone(ctx, pid, func() bool { return d.shimAlive(id, pid) }, killWait)
}
