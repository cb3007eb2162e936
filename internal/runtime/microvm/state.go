package microvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

// waitPoll is how often Wait and Stop look at the machine.
const waitPoll = 20 * time.Millisecond

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
	var sh shimRecord
	if readJSON(d.path(id, fileShim), &sh) != nil {
		return runtime.State{Status: runtime.StatusCreated}, nil
	}
	st := runtime.State{StartedAt: sh.StartedAt}
	if ex, ok := d.exitRecord(id); ok {
		return exited(st, ex), nil
	}
	if d.shimAlive(id, sh.Pid) {
		pid, err := readPid(d.path(id, fileQEMUPid))
		if err != nil || !fileExists(d.path(id, fileRunning)) {
			st.Status = runtime.StatusCreated // still booting
			return st, nil
		}
		st.Status, st.Pid = runtime.StatusRunning, pid
		return st, nil
	}
	// The shim may have written its record just after we looked.
	if ex, ok := d.exitRecord(id); ok {
		return exited(st, ex), nil
	}
	st.Status, st.ExitCode = runtime.StatusExited, -1
	return st, nil
}

func exited(st runtime.State, ex exitRecord) runtime.State {
	st.Status, st.ExitCode, st.ExitedAt = runtime.StatusExited, ex.ExitCode, ex.ExitedAt
	return st
}

func (d *Driver) exitRecord(id string) (exitRecord, bool) {
	var ex exitRecord
	return ex, readJSON(d.path(id, fileExit), &ex) == nil
}

// Wait polls State until the VM has exited or ctx is done.
func (d *Driver) Wait(ctx context.Context, id string) (runtime.State, error) {
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		st, err := d.State(ctx, id)
		if err != nil || st.Status == runtime.StatusExited {
			return st, err
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("microvm: wait %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// List returns the ids of the machines in the state dir.
func (d *Driver) List(ctx context.Context) ([]string, error) {
	entries, err := os.ReadDir(d.dir(""))
	if err != nil {
		return nil, fmt.Errorf("microvm: list: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && fileExists(d.path(e.Name(), fileRecord)) {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// liveShim returns the machine's shim if it is still running.
func (d *Driver) liveShim(id string) (shimRecord, bool) {
	var sh shimRecord
	if readJSON(d.path(id, fileShim), &sh) != nil {
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

// procAlive reports whether pid runs and has arg on its command line.
func procAlive(pid int, arg string) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state letter follows the command name, which is in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	for _, a := range strings.Split(string(cmdline), "\x00") {
		if a == arg || strings.Contains(a, "path="+arg+"/") {
			return true
		}
	}
	return false
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
