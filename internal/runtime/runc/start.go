package runc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
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
	unlock := d.lock(id)
	defer unlock()
	r, err := d.readRecord(id)
	if err != nil {
		return err
	}
	if sh, ok := d.liveShim(id); ok {
		if !fileExists(d.path(id, fileExit)) {
			return d.waitStarted(ctx, id, sh.Pid, nil) // already started or starting
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

	args := append(d.shim[1:len(d.shim):len(d.shim)],
		"--runc", d.runc, "--root", d.runcRoot, "--id", id, "--dir", d.dir(id))
	cmd := exec.Command(d.shim[0], args...)
	// Its own session keeps the shim out of the agent's process group and
	// terminal signals; nil stdio means it holds none of the agent's pipes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("runc: start %s: shim: %w", id, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait() // reap it; after an agent restart init does
		close(exited)
	}()
	sh := shimRecord{Pid: cmd.Process.Pid, StartedAt: time.Now().UTC()}
	if err := writeJSON(d.path(id, fileShim), sh); err != nil {
		return fmt.Errorf("runc: start %s: %w", id, err)
	}
	d.log.Debug("machine starting", "id", id, "shim", sh.Pid)
	return d.waitStarted(ctx, id, sh.Pid, exited)
}

// waitStarted waits until runc has written the container's pid, or the
// run is over.
func (d *Driver) waitStarted(ctx context.Context, id string, shimPid int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if fileExists(d.path(id, filePid)) || fileExists(d.path(id, fileExit)) {
			return nil
		}
		alive := true
		select {
		case <-exited:
			alive = false
		default:
			if exited == nil {
				alive = d.shimAlive(id, shimPid)
			}
		}
		if !alive {
			if fileExists(d.path(id, fileExit)) {
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

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitShimGone waits for a shim that has finished its work to exit.
func (d *Driver) waitShimGone(ctx context.Context, id string, pid int) error {
	ctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for d.shimAlive(id, pid) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("shim %d of the last run is still running: %w", pid, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}
