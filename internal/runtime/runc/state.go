package runc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// waitPoll is how often Stop looks at the machine.
const waitPoll = machinedir.Poll

// State combines the shim's records with runc's view. A machine whose shim
// died without an exit record (a host reboot, a killed shim) is reported
// exited with code -1.
func (d *Driver) State(ctx context.Context, id string) (runtime.State, error) {
	if err := checkID(id); err != nil {
		return runtime.State{}, err
	}
	if _, err := d.readRecord(id); err != nil {
		return runtime.State{}, err
	}
	var sh machinedir.Shim
	started := machinedir.ReadJSON(d.path(id, fileShim), &sh) == nil
	if !started {
		return runtime.State{Status: runtime.StatusCreated}, nil
	}
	st := runtime.State{StartedAt: sh.StartedAt}
	if d.hasSnapshot(id) {
		// Suspended, unless a restore is under way.
		if _, alive := d.liveShim(id); !alive || machinedir.Exists(d.path(id, fileExit)) {
			st.Status = runtime.StatusSuspended
			return st, nil
		}
	}
	if ex, ok := d.exitRecord(id); ok {
		return machinedir.Exited(st, ex), nil
	}
	if d.shimAlive(id, sh.Pid) {
		pid, err := machinedir.ReadPid(d.path(id, filePid))
		if err != nil {
			st.Status = runtime.StatusCreated // runc has not started it yet
			return st, nil
		}
		st.Status, st.Pid = runtime.StatusRunning, pid
		return st, nil
	}
	// The shim may have written its record just after we looked.
	if ex, ok := d.exitRecord(id); ok {
		return machinedir.Exited(st, ex), nil
	}
	// No shim: runc is the only one who still knows.
	rs, found, err := d.runcState(ctx, id)
	if err != nil {
		return runtime.State{}, err
	}
	if found && rs.Status == "running" {
		st.Status, st.Pid = runtime.StatusRunning, rs.Pid
		return st, nil
	}
	st.Status, st.ExitCode = runtime.StatusExited, -1
	return st, nil
}

func (d *Driver) exitRecord(id string) (machinedir.Exit, bool) {
	return machinedir.ReadExit(d.path(id, fileExit))
}

// Wait returns when the process has exited or ctx is done, woken by
// changes in the machine directory (machinedir.Wait).
func (d *Driver) Wait(ctx context.Context, id string) (runtime.State, error) {
	st, err := machinedir.Wait(ctx, d.dir(id), func(ctx context.Context) (runtime.State, error) { return d.State(ctx, id) })
	if err != nil && ctx.Err() != nil {
		return st, fmt.Errorf("runc: wait %s: %w", id, err)
	}
	return st, err
}

// List returns the ids of the machines in the state dir.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	ids, err := machinedir.List(d.dir(""), fileRecord)
	if err != nil {
		return nil, fmt.Errorf("runc: list: %w", err)
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
	dir := d.dir(id)
	return machinedir.ProcAlive(pid, func(arg string) bool { return arg == dir })
}

// runcStatus is the part of `runc state` the driver reads.
type runcStatus struct {
	Pid    int    `json:"pid"`
	Status string `json:"status"`
}

// runcState asks runc about container id; found is false if runc does not
// know it.
func (d *Driver) runcState(ctx context.Context, id string) (st runcStatus, found bool, err error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, d.runc, "--root", d.runcRoot, "state", id)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stderr.String(), "does not exist") {
			return st, false, nil
		}
		return st, false, fmt.Errorf("runc state %s: %w: %s", id, err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		return st, false, fmt.Errorf("runc state %s: %w", id, err)
	}
	return st, true, nil
}

// runcCmd runs runc with the driver's root.
func (d *Driver) runcCmd(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, d.runc, append([]string{"--root", d.runcRoot}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// errNotRunning matches runc's refusals to signal a container that has
// already stopped or gone.
func errNotRunning(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "not running") ||
		strings.Contains(err.Error(), "does not exist") ||
		strings.Contains(err.Error(), "process already finished"))
}
