package runc

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// ShimMain is the shim: `perch runc-shim --runc R --root ROOT --id ID
// --dir DIR`. Start runs it in a session of its own; it runs the machine's
// container in the foreground with the output appended to DIR's log files,
// waits for it and records the exit in DIR/exit.json. It outlives the agent
// that started it. It returns the shim's own exit status.
func ShimMain(args []string) int {
	fs := flag.NewFlagSet("runc-shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runc := fs.String("runc", "runc", "runc binary")
	root := fs.String("root", "", "runc state root")
	id := fs.String("id", "", "container id")
	dir := fs.String("dir", "", "machine directory: bundle, logs, exit record")
	if err := fs.Parse(args); err != nil || *root == "" || *id == "" || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: perch runc-shim --runc PATH --root DIR --id ID --dir DIR (started by the agent, not by hand)")
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

	cmd := exec.Command(*runc, "--root", *root, "run",
		"--bundle", *dir, "--pid-file", filepath.Join(*dir, filePid), *id)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	code, err := runExitCode(cmd)
	if err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: run %s: %v\n", *id, err)
	}
	if err := machinedir.WriteExit(filepath.Join(*dir, fileExit), code); err != nil {
		fmt.Fprintf(stderr, "perch runc-shim: record exit of %s: %v\n", *id, err)
		return 1
	}
	return 0
}

// runExitCode runs cmd and returns its exit code; a process killed by a
// signal gets 128+signal, as in a shell. runc itself already reports its
// container's death by signal that way.
func runExitCode(cmd *exec.Cmd) (int, error) {
	err := cmd.Run()
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
