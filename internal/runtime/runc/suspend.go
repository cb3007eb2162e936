package runc

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/hostnet"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

var _ runtime.Suspender = (*Driver)(nil)

// Files of a suspended machine, in its directory.
const (
	dirSnapshot    = "snapshot"     // CRIU's images of a complete checkpoint
	dirSnapshotTmp = "snapshot.tmp" // a checkpoint being written
	dirCriuWork    = "criu"         // CRIU's logs and work files
	fileDumpLog    = "dump.log"     // in dirCriuWork
	fileRestoreLog = "restore.log"  // in dirCriuWork
	fileCriuConf   = "criu.conf"    // CRIU options for the next checkpoint, named by the bundle's org.criu.config
)

// checkpointTries bounds the checkpoints Suspend attempts while CRIU finds
// connections in a listening socket's accept queue; the last one skips them.
const checkpointTries = 5

// Suspend checkpoints the running machine with CRIU (`runc checkpoint`)
// into its directory, which stops it; the next Start restores it. The
// images are written to snapshot.tmp and renamed to snapshot once
// complete, so a crash mid-checkpoint never leaves a snapshot to resume.
func (d *Driver) Suspend(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	st, err := d.State(ctx, id)
	if err != nil {
		return err
	}
	if st.Status != runtime.StatusRunning {
		return fmt.Errorf("runc: suspend %s: the machine is %s, not running", id, st.Status)
	}
	if _, err := exec.LookPath("criu"); err != nil {
		return fmt.Errorf("runc: suspend %s: %w: criu is not installed on this host (scripts/deps.sh builds it)", id, runtime.ErrCannotSuspend)
	}
	tmp, work := d.path(id, dirSnapshotTmp), d.path(id, dirCriuWork)
	for _, p := range []string{tmp, work} {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("runc: suspend %s: %w", id, err)
		}
		if err := os.Mkdir(p, 0o700); err != nil {
			return fmt.Errorf("runc: suspend %s: %w", id, err)
		}
	}
	r, err := d.readRecord(id)
	if err != nil {
		return err
	}
	if r.UIDBase != 0 {
		// CRIU dumps the network namespace (suspendns.go).
		if err := unmountRootfs(d.runcNetnsPath(id)); err != nil {
			return fmt.Errorf("runc: suspend %s: %w", id, err)
		}
	}
	if err := d.checkpoint(ctx, id, tmp, work); err != nil {
		os.RemoveAll(tmp)
		if r.UIDBase != 0 {
			if perr := d.pinRuncNetns(id, netnsPath(id, r.Spec.Net)); perr != nil {
				d.log.Warn("pin the network namespace again after a failed checkpoint", "id", id, "err", perr)
			}
		}
		// CRIU unfreezes the machine when a dump fails; it keeps running.
		return fmt.Errorf("runc: suspend %s: %w: %w", id, runtime.ErrCannotSuspend, err)
	}
	if err := os.Rename(tmp, d.path(id, dirSnapshot)); err != nil {
		return fmt.Errorf("runc: suspend %s: %w", id, err)
	}
	// The container is gone; its shim records the end of `runc run`.
	if sh, ok := d.liveShim(id); ok {
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			return fmt.Errorf("runc: suspend %s: %w", id, err)
		}
	}
	d.log.Debug("machine suspended", "id", id)
	return nil
}

// checkpoint runs `runc checkpoint` into tmp. --tcp-established keeps
// connections open across the suspension (the peers are on this host: the
// edge and the mesh); the netns stays. A connection that finished its
// handshake but that the app has not accepted yet (a health probe, most
// often: the edges were drained) makes CRIU refuse; the app accepts it
// within moments, so the dump is tried again, and the last try tells CRIU
// to skip such connections (their client sees a reset), through the
// configuration file the bundle names (runc 1.1 has no flag for it).
func (d *Driver) checkpoint(ctx context.Context, id, tmp, work string) error {
	conf := d.path(id, fileCriuConf)
	defer os.Remove(conf)
	wait := 50 * time.Millisecond
	for try := 1; ; try++ {
		if try == checkpointTries {
			if err := os.WriteFile(conf, []byte("skip-in-flight\n"), 0o600); err != nil {
				return err
			}
		}
		err := d.runcCmd(ctx, "checkpoint", "--tcp-established",
			"--image-path", tmp, "--work-path", work, id)
		if err == nil {
			return nil
		}
		logTail := criuLogTail(filepath.Join(work, fileDumpLog))
		if try == checkpointTries || !strings.Contains(logTail, "In-flight connections") {
			return fmt.Errorf("%w%s", err, logTail)
		}
		d.log.Debug("checkpoint found connections not yet accepted; trying again", "id", id, "try", try)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w%s", err, logTail)
		case <-time.After(wait):
		}
		wait *= 2
		for _, p := range []string{tmp, work} {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			if err := os.Mkdir(p, 0o700); err != nil {
				return err
			}
		}
	}
}

// DiscardSnapshot removes the machine's snapshot: its next Start boots it.
func (d *Driver) DiscardSnapshot(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	return d.discardSnapshot(id)
}

func (d *Driver) discardSnapshot(id string) error {
	if d.hasSnapshot(id) {
		d.unlockNet(id)
	}
	return d.removeSnapshot(id)
}

// removeSnapshot removes the snapshot's files.
func (d *Driver) removeSnapshot(id string) error {
	for _, p := range []string{dirSnapshot, dirSnapshotTmp} {
		if err := os.RemoveAll(d.path(id, p)); err != nil {
			return fmt.Errorf("runc: discard snapshot of %s: %w", id, err)
		}
	}
	return nil
}

// hasSnapshot reports whether the machine has a complete snapshot.
func (d *Driver) hasSnapshot(id string) bool {
	return machinedir.Exists(d.path(id, dirSnapshot))
}

// criuLogTail returns the error lines of a CRIU log, for messages.
func criuLogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var errs []string
	for _, l := range bytes.Split(b, []byte("\n")) {
		if bytes.Contains(l, []byte("Error")) {
			errs = append(errs, strings.TrimSpace(string(l)))
		}
	}
	if len(errs) > 3 {
		errs = errs[len(errs)-3:]
	}
	if len(errs) == 0 {
		return "; see " + path
	}
	return "; criu: " + strings.Join(errs, "; ") + " (full log: " + path + ")"
}

// errResume wraps a failed restore.
func errResume(id string, err error) error {
	return fmt.Errorf("runc: start %s: %w: %w", id, runtime.ErrResumeFailed, err)
}

// criuChain is the iptables chain with which CRIU locks a checkpointed
// machine's network namespace: it drops every packet not its own, so that
// the peers of the machine's TCP connections see no reset while it is
// suspended. `runc restore` lifts the lock; a snapshot discarded must lift
// it too, or the machine booted afresh could not be reached.
const criuChain = "CRIU"

// unlockNet removes CRIU's network lock from the machine's namespace.
func (d *Driver) unlockNet(id string) {
	netns := hostnet.NetnsPath(id)
	if !machinedir.Exists(netns) {
		return
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		run := func(args ...string) error {
			out, err := exec.Command("nsenter", append([]string{"--net=" + netns, tool, "-w"}, args...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
			}
			return nil
		}
		if run("-S", criuChain) != nil {
			continue // no lock
		}
		for _, hook := range []string{"INPUT", "OUTPUT"} {
			for i := 0; i < 8 && run("-D", hook, "-j", criuChain) == nil; i++ {
			}
		}
		for _, args := range [][]string{{"-F", criuChain}, {"-X", criuChain}} {
			if err := run(args...); err != nil {
				d.log.Warn("removing CRIU's network lock", "id", id, "err", err)
			}
		}
	}
}
