package microvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

var _ runtime.Suspender = (*Driver)(nil)

// Files of a suspended microVM, in its directory.
const (
	fileQMP         = "qmp.sock"        // qemu's QMP socket
	fileSnapshot    = "vmstate"         // the VM's migration stream: memory and devices
	fileSnapshotTmp = "vmstate.tmp"     // one being written
	fileSnapRunning = "vmstate.running" // the running record of the suspended run
)

// Suspend pauses the VM and migrates it to a file in its directory (QMP
// stop, then migrate to `exec:cat > vmstate.tmp`, renamed to vmstate once
// complete), then ends qemu. The next Start runs qemu with -incoming from
// that file: the guest, perch-init and the app go on where they were, and
// the shim does not send the guest its config again. The disk is the
// machine's own qcow2 file, untouched while suspended.
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
		return fmt.Errorf("microvm: suspend %s: the machine is %s, not running", id, st.Status)
	}
	q, err := dialQMP(ctx, d.path(id, fileQMP))
	if err != nil {
		return fmt.Errorf("microvm: suspend %s: %w: no QMP socket (a VM started before suspend existed?): %w", id, runtime.ErrCannotSuspend, err)
	}
	defer q.close()
	if _, err := q.do("stop", nil); err != nil {
		return fmt.Errorf("microvm: suspend %s: %w: %w", id, runtime.ErrCannotSuspend, err)
	}
	resume := func() {
		if _, err := q.do("cont", nil); err != nil {
			d.log.Warn("resuming the VM after a failed suspend", "id", id, "err", err)
		}
	}
	tmp := d.path(id, fileSnapshotTmp)
	os.Remove(tmp)
	if _, err := q.do("migrate", map[string]any{"uri": "exec:cat > " + shellQuote(tmp)}); err != nil {
		resume()
		return fmt.Errorf("microvm: suspend %s: %w: %w", id, runtime.ErrCannotSuspend, err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		raw, err := q.do("query-migrate", nil)
		if err != nil {
			resume()
			return fmt.Errorf("microvm: suspend %s: %w: %w", id, runtime.ErrCannotSuspend, err)
		}
		var mig struct {
			Status string `json:"status"`
			Error  string `json:"error-desc"`
		}
		json.Unmarshal(raw, &mig)
		if mig.Status == "completed" {
			break
		}
		if mig.Status == "failed" || mig.Status == "cancelled" {
			os.Remove(tmp)
			resume()
			return fmt.Errorf("microvm: suspend %s: %w: migration %s: %s", id, runtime.ErrCannotSuspend, mig.Status, mig.Error)
		}
		select {
		case <-ctx.Done():
			q.do("migrate_cancel", nil)
			os.Remove(tmp)
			resume()
			return fmt.Errorf("microvm: suspend %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
	running, _ := os.ReadFile(d.path(id, fileRunning))
	if err := os.WriteFile(d.path(id, fileSnapRunning), running, 0o600); err != nil {
		return fmt.Errorf("microvm: suspend %s: %w", id, err)
	}
	if err := os.Rename(tmp, d.path(id, fileSnapshot)); err != nil {
		return fmt.Errorf("microvm: suspend %s: %w", id, err)
	}
	// The snapshot is complete: end qemu; its shim records the end.
	if _, err := q.do("quit", nil); err != nil {
		d.command(id, "kill")
	}
	if sh, ok := d.liveShim(id); ok {
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			return fmt.Errorf("microvm: suspend %s: %w", id, err)
		}
	}
	d.log.Debug("machine suspended", "id", id)
	return nil
}

// DiscardSnapshot removes the VM's snapshot: its next Start boots it.
func (d *Driver) DiscardSnapshot(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	return d.removeSnapshot(id)
}

func (d *Driver) removeSnapshot(id string) error {
	for _, name := range []string{fileSnapshot, fileSnapshotTmp, fileSnapRunning} {
		if err := os.Remove(d.path(id, name)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("microvm: discard snapshot of %s: %w", id, err)
		}
	}
	return nil
}

func (d *Driver) hasSnapshot(id string) bool { return machinedir.Exists(d.path(id, fileSnapshot)) }

// shellQuote quotes s for sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

var _ runtime.DiskUser = (*Driver)(nil)

// DiskUsage is what the VM holds of its own on disk: its qcow2 overlay
// (the image's cached disk under it is shared, not counted) and a
// suspended VM's migration stream.
func (d *Driver) DiskUsage(ctx context.Context, id string) (int64, error) {
	if err := checkID(id); err != nil {
		return 0, err
	}
	return machinedir.DiskUsage(d.path(id, fileDisk), d.path(id, fileSnapshot))
}
