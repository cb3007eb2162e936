package microvm

import (
	"context"
	"fmt"
	"strings"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// waitPoll is how often Stop looks at the machine.
const waitPoll = machinedir.Poll

// State reads the shim's records. A machine is running from the moment
// the init has started the app until qemu has exited; its Pid is qemu's.
// A machine whose shim died without an exit record (a host reboot, a
// killed shim, which takes qemu with it) is reported exited with code -1.
func (d *Driver) State(ctx context.Context, id string) (runtime.State, error) {
	if err := checkID(id); err != nil {
		return runtime.State{}, err
	}
	if _, err := d.readRecord(id); err != nil {
		return runtime.State{}, err
	}
	var sh machinedir.Shim
	if machinedir.ReadJSON(d.path(id, fileShim), &sh) != nil {
		return runtime.State{Status: runtime.StatusCreated}, nil
	}
	st := runtime.State{StartedAt: sh.StartedAt}
	if d.hasSnapshot(id) {
		// Suspended, unless a resume is under way.
		if !d.shimAlive(id, sh.Pid) || machinedir.Exists(d.path(id, fileExit)) {
			st.Status = runtime.StatusSuspended
			return st, nil
		}
	}
	if ex, ok := d.exitRecord(id); ok {
		return machinedir.Exited(st, ex), nil
	}
	if d.shimAlive(id, sh.Pid) {
		pid, err := machinedir.ReadPid(d.path(id, fileQEMUPid))
		if err != nil || !machinedir.Exists(d.path(id, fileRunning)) {
			st.Status = runtime.StatusCreated // still booting
			return st, nil
		}
		st.Status, st.Pid = runtime.StatusRunning, pid
		return st, nil
	}
	// The shim may have written its record just after we looked.
	if ex, ok := d.exitRecord(id); ok {
		return machinedir.Exited(st, ex), nil
	}
	st.Status, st.ExitCode = runtime.StatusExited, -1
	return st, nil
}

func (d *Driver) exitRecord(id string) (machinedir.Exit, bool) {
	return machinedir.ReadExit(d.path(id, fileExit))
}

// Wait returns when the VM has exited or ctx is done, woken by changes in
// the machine directory (machinedir.Wait).
func (d *Driver) Wait(ctx context.Context, id string) (runtime.State, error) {
	st, err := machinedir.Wait(ctx, d.dir(id), func(ctx context.Context) (runtime.State, error) { return d.State(ctx, id) })
	if err != nil && ctx.Err() != nil {
		return st, fmt.Errorf("microvm: wait %s: %w", id, err)
	}
	return st, err
}

// List returns the ids of the machines in the state dir.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	ids, err := machinedir.List(d.dir(""), fileRecord)
	if err != nil {
		return nil, fmt.Errorf("microvm: list: %w", err)
	}
	return ids, nil
}

// liveShim returns the machine's shim if it is still running.
func (d *Driver) liveShim(id string) (machinedir.Shim, bool) {
	var sh machinedir.Shim
	if machinedir.ReadJSON(d.path(id, fileShim), &sh) != nil {
		return sh, false
	}
	return sh, d.shimAlive(id, sh.Pid)
}

// shimAlive reports whether pid is a live shim of machine id: its command
// line names the machine's directory, so a reused pid is not mistaken for
// it.
func (d *Driver) shimAlive(id string, pid int) bool {
	return procAlive(pid, d.dir(id))
}

// procAlive reports whether pid runs and has arg on its command line,
// alone or as the directory of qemu's path= options.
func procAlive(pid int, arg string) bool {
	return machinedir.ProcAlive(pid, func(a string) bool {
		return a == arg || strings.Contains(a, "path="+arg+"/")
	})
}
