package runc

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// ShimMain is the shim: `perch runc-shim --runc R --root ROOT --id ID
// --dir DIR [--restore IMAGES]`. Start runs it in a session of its own; it
// runs the machine's container in the foreground (`runc run`, or `runc
// restore` from the snapshot IMAGES when given) with the output appended to
// DIR's log files, waits for it and records the exit in DIR/exit.json. It
// outlives the agent that started it. It returns the shim's own exit
// status.
//
// The container's stdio are pipes to the shim, not the log files
// themselves: CRIU can checkpoint a pipe whose other end is outside the
// container (runc hands the new pipes to the restored process), but not a
// file outside the container's mounts.
func ShimMain(args []string) int {
	fs := flag.NewFlagSet("runc-shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runc := fs.String("runc", "runc", "runc binary")
	root := fs.String("root", "", "runc state root")
	id := fs.String("id", "", "container id")
	dir := fs.String("dir", "", "machine directory: bundle, logs, exit record")
	restore := fs.String("restore", "", "restore the container from this checkpoint instead of running it")
	if err := fs.Parse(args); err != nil || *root == "" || *id == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: perch runc-shim --runc PATH --root DIR --id ID --dir DIR [--restore IMAGES] (started by the agent, not by hand)")
		return 2
	}
	stdout, err := openLog(filepath.Join(*dir, fileStdout))
	if err != nil {
		return 1
	}
	defer stdout.Close()
	stderr, err := openLog(filepath.Join(*dir, fileStderr))
	if err != nil {
		return 1
	}
	defer stderr.Close()
	// stdin is a pipe nobody writes to, held open for the container's life.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: %v\n", err)
		return 1
	}
	defer stdinW.Close()

	var cmd *exec.Cmd
	if *restore == "" {
		cmd = exec.Command(*runc, "--root", *root, "run",
			"--bundle", *dir, "--pid-file", filepath.Join(*dir, filePid), *id)
	} else {
		cmd = exec.Command(*runc, "--root", *root, "restore", "--tcp-established",
			"--image-path", *restore, "--work-path", filepath.Join(*dir, dirCriuWork),
			"--bundle", *dir, "--pid-file", filepath.Join(*dir, filePid), *id)
	}
	// Writers that are not *os.File make exec give the container pipes and
	// copy them to the logs; WaitDelay stops waiting for a pipe that a
	// leftover process of the container still holds.
	cmd.Stdin = stdinR
	cmd.Stdout, cmd.Stderr = logWriter{stdout}, logWriter{stderr}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: run %s: %v\n", *id, err)
		return 1
	}
	oom := watchMachineOOM(*dir, cmd, stderr)
	code, err := runExitCode(cmd)
	stdinR.Close()
	if err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: run %s: %v\n", *id, err)
	}
	oomKilled := code == 128+int(syscall.SIGKILL) && oom.wait().Killed()
	if oomKilled {
		fmt.Fprintf(stderr, "perch runc-shim: %s was killed: out of memory\n", *id)
	}
	unmapVolumes(*dir) // idmap.go: before the exit record, after which the agent unmounts the volumes
	if err := machinedir.WriteExitOOM(filepath.Join(*dir, fileExit), code, oomKilled); err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: record exit of %s: %v\n", *id, err)
		return 1
	}
	return 0
}

// logWriter hides the *os.File from exec, which then copies through a pipe.
type logWriter struct{ f *os.File }

func (w logWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

// runExitCode waits for the started cmd and returns its exit code; a
// process killed by a signal gets 128+signal, as in a shell. runc itself
// already reports its container's death by signal that way.
func runExitCode(cmd *exec.Cmd) (int, error) {
	err := cmd.Wait()
	if errors.Is(err, exec.ErrWaitDelay) {
		err = nil // exited; a process it left behind still held its output
		if ps := cmd.ProcessState; ps != nil && !ps.Success() {
			err = &exec.ExitError{ProcessState: ps}
		}
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
}

// oomResult is the OOM watch of a run, once it has one.
type oomResult struct {
	ch chan *oomWatch
}

func (r oomResult) wait() *oomWatch {
	w := <-r.ch
	if w != nil {
		select {
		case <-w.done: // the cgroup is gone: the last notification is read
		case <-time.After(time.Second):
		}
	}
	return w
}

// watchMachineOOM watches the memory cgroup of the container cmd (runc)
// runs, from the moment runc has written its pid file (the cgroup exists
// then) until runc exits.
func watchMachineOOM(dir string, cmd *exec.Cmd, log io.Writer) oomResult {
	r := oomResult{ch: make(chan *oomWatch, 1)}
	var spec struct {
		Linux struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	}
	if err := machinedir.ReadJSON(filepath.Join(dir, fileConfig), &spec); err != nil || spec.Linux.CgroupsPath == "" {
		r.ch <- nil
		return r
	}
	cg, v2 := memoryCgroupDir(spec.Linux.CgroupsPath)
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for range tick.C {
			if !machinedir.Exists(filepath.Join(dir, filePid)) {
				if cmd.Process.Signal(syscall.Signal(0)) != nil {
					r.ch <- nil // runc is done without running it
					return
				}
				continue
			}
			w, err := watchOOM(cg, v2)
			// A cgroup already gone is a machine already ended (a process
			// that exits at once): nothing to watch, and nothing for the
			// app's log, whose last lines the user reads for its own.
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				fmt.Fprintf(log, "perch runc-shim: cannot watch for OOM kills: %v\n", err)
			}
			r.ch <- w
			return
		}
	}()
	return r
}
