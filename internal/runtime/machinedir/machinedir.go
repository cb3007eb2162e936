// Package machinedir holds what the runc and microVM drivers share about a
// machine's directory and its shim: the shim and exit records, written
// atomically so a reader never sees half of one; the shim process, started
// in its own session and recognised again by pid after an agent restart;
// and the waiting for it to go: on inotify events in its directory, not by
// polling. What runs under the shim (runc,
// qemu) stays in the drivers.
package machinedir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"golang.org/x/sys/unix"
)

// Shim is the record of the shim of a machine's current (or last) run.
type Shim struct {
	Pid       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
}

// Exit is written by the shim once the machine's process has exited.
type Exit struct {
	ExitCode int       `json:"exit_code"`
	ExitedAt time.Time `json:"exited_at"`
	// OOMKilled says the kernel's OOM killer ended the process: the
	// machine went over its memory.
	OOMKilled bool `json:"oom_killed,omitempty"`
}

// Exited is st as of the run that ex ended.
func Exited(st runtime.State, ex Exit) runtime.State {
	st.Status, st.ExitCode, st.ExitedAt = runtime.StatusExited, ex.ExitCode, ex.ExitedAt
	st.OOMKilled = ex.OOMKilled
	return st
}

// ReadJSON decodes the file at path into v; os.ErrNotExist if it is missing.
func ReadJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// WriteJSON replaces the file at path so readers never see half of it.
func WriteJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Exists reports whether there is a file at path.
func Exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// ReadPid reads a pid file such as runc's or qemu's.
func ReadPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// List returns, sorted, the names of the directories under root that hold
// a file named record: the machines a driver has created.
func List(root, record string) ([]string, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && Exists(filepath.Join(root, e.Name(), record)) {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// ProcAlive reports whether pid runs (and is not a zombie) and has an
// argument for which match is true, so that a reused pid is not mistaken
// for a machine's shim or VM.
func ProcAlive(pid int, match func(arg string) bool) bool {
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
	return slices.ContainsFunc(strings.Split(string(cmdline), "\x00"), match)
}

// WriteExit records, in the exit file at path, that the machine's process
// has just exited with code.
func WriteExit(path string, code int) error {
	return WriteJSON(path, Exit{ExitCode: code, ExitedAt: time.Now().UTC()})
}

// WriteExitOOM is WriteExit for a process the OOM killer may have ended.
func WriteExitOOM(path string, code int, oomKilled bool) error {
	return WriteJSON(path, Exit{ExitCode: code, ExitedAt: time.Now().UTC(), OOMKilled: oomKilled})
}

// Locks serialises the changes made to each machine; the zero value is
// ready to use.
type Locks struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// Lock locks machine id and returns its unlock.
func (l *Locks) Lock(id string) (unlock func()) {
	l.mu.Lock()
	m, ok := l.locks[id]
	if !ok {
		if l.locks == nil {
			l.locks = map[string]*sync.Mutex{}
		}
		m = &sync.Mutex{}
		l.locks[id] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// CreateFiles makes the empty files named in dir, keeping any that exist:
// the log files a shim appends to.
func CreateFiles(dir string, names ...string) error {
	for _, name := range names {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	}
	return nil
}

// Poll is how often the drivers' stop loops look at a machine that is
// being stopped. Wait does not poll at this rate (see wait.go).
const Poll = 20 * time.Millisecond

// ReadExit reads the exit record at path, if the shim wrote one.
func ReadExit(path string) (Exit, bool) {
	var ex Exit
	return ex, ReadJSON(path, &ex) == nil
}

// DiskUsage is the disk allocated to the files and directories under each
// path (a file or a tree; one missing counts 0), each inode once: what
// du(1) reports.
func DiskUsage(paths ...string) (int64, error) {
	seen := map[[2]uint64]bool{}
	var total int64
	for _, p := range paths {
		err := filepath.WalkDir(p, func(path string, _ fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			k := [2]uint64{uint64(st.Dev), st.Ino}
			if !seen[k] {
				seen[k] = true
				total += st.Blocks * 512
			}
			return nil
		})
		if err != nil {
			return total, fmt.Errorf("disk usage of %s: %w", p, err)
		}
	}
	return total, nil
}
