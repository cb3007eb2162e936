package microvm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/runtime/machinedir"
	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

// ShimMain is the shim: `perch microvm-shim --dir DIR`. Start runs it in
// a session of its own. It runs the qemu of DIR/vm.json, sends the guest
// its config over the control port, writes the app's output to DIR's log
// files, forwards the commands written to DIR/ctl ("signal N" to the app
// through the init, "kill" to end the VM), and when qemu has exited
// records the app's exit code in DIR/exit.json: the one the init
// reported, 128+9 when the VM was killed, -1 when it stopped without a
// word. It outlives the agent that started it. It returns the shim's own
// exit status.
func ShimMain(args []string) int {
	fs := flag.NewFlagSet("microvm-shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "", "machine directory")
	if err := fs.Parse(args); err != nil || *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: perch microvm-shim --dir DIR (started by the agent, not by hand)")
		return 2
	}
	s, err := openShim(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "perch microvm-shim:", err)
		return 1
	}
	defer s.close()
	code := s.run()
	s.mu.Lock()
	oom := s.oomKilled && s.reported != nil && *s.reported == code
	s.mu.Unlock()
	if err := machinedir.WriteExitOOM(filepath.Join(*dir, fileExit), code, oom); err != nil {
		fmt.Fprintf(s.stderr, "perch microvm-shim: record the exit: %v\n", err)
		return 1
	}
	return 0
}

type shim struct {
	dir                     string
	vm                      vmConfig
	stdout, stderr, console *os.File

	mu        sync.Mutex
	reported  *int // the exit code the init reported
	oomKilled bool // and that the guest's OOM killer ended the app
	killed    bool // the VM was killed on request
}

func openShim(dir string) (*shim, error) {
	s := &shim{dir: dir}
	if err := machinedir.ReadJSON(filepath.Join(dir, fileVM), &s.vm); err != nil {
		return nil, err
	}
	var err error
	for _, f := range []struct {
		name string
		dst  **os.File
	}{{fileStdout, &s.stdout}, {fileStderr, &s.stderr}, {fileConsole, &s.console}} {
		if *f.dst, err = os.OpenFile(filepath.Join(dir, f.name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

func (s *shim) close() {
	for _, f := range []*os.File{s.stdout, s.stderr, s.console} {
		if f != nil {
			f.Close()
		}
	}
}

// run runs the VM to its end and returns the app's exit code.
func (s *shim) run() int {
	// qemu dies with the thread that started it (Pdeathsig), so that thread
	// must be the one that lives as long as the shim: a VM never runs
	// unsupervised.
	goruntime.LockOSThread()
	cmd := exec.Command(s.vm.QEMU, s.vm.Args...)
	cmd.Stderr = s.console
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	toGuest, err := cmd.StdinPipe()
	if err != nil {
		return s.fail("qemu stdin: %v", err)
	}
	fromGuest, err := cmd.StdoutPipe()
	if err != nil {
		return s.fail("qemu stdout: %v", err)
	}
	// Open before qemu starts, so that a stop during the boot is heard.
	// Read-write, so that it never reads end-of-file between writers.
	ctl, err := os.OpenFile(filepath.Join(s.dir, fileCtl), os.O_RDWR, 0)
	if err != nil {
		return s.fail("control fifo: %v", err)
	}
	defer ctl.Close()
	if err := cmd.Start(); err != nil {
		return s.fail("start qemu: %v", err)
	}
	os.WriteFile(filepath.Join(s.dir, fileQEMUPid), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
	guest := guestinit.NewWriter(toGuest)
	if s.vm.Resume {
		// The guest's init already has its config and runs the app: it
		// goes on once qemu has loaded the snapshot.
		go s.resumed()
	} else {
		cfg, _ := json.Marshal(s.vm.Guest)
		go guest.Send(guestinit.FrameConfig, cfg)
	}
	go s.commands(ctl, cmd.Process, guest)
	s.fromGuest(fromGuest, guest)
	err = cmd.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.reported != nil:
		return *s.reported
	case s.killed:
		return 128 + int(syscall.SIGKILL)
	}
	if machinedir.Exists(filepath.Join(s.dir, fileSnapshot)) {
		return -1 // suspended: qemu quit after writing the snapshot
	}
	fmt.Fprintf(s.stderr, "perch: the microVM stopped without reporting the app's exit code (qemu: %v); its console log says why\n", exitStatus(err))
	return -1
}

// resumed waits (over QMP) for qemu to run the guest restored from the
// snapshot, then records the app running as it was when suspended.
func (s *shim) resumed() {
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if q, err := dialQMP(ctx, filepath.Join(s.dir, fileQMP)); err == nil {
			raw, err := q.do("query-status", nil)
			var st struct {
				Status string `json:"status"`
			}
			if err == nil && json.Unmarshal(raw, &st) == nil && st.Status == "paused" {
				// Loaded; paused as the VM was when its snapshot was taken.
				_, err = q.do("cont", nil)
				if err == nil {
					st.Status = "running"
				}
			}
			q.close()
			if err == nil && st.Status == "running" {
				running, _ := os.ReadFile(filepath.Join(s.dir, fileSnapRunning))
				os.WriteFile(filepath.Join(s.dir, fileRunning), running, 0o600)
				return
			}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(s.console, "perch microvm-shim: the resumed VM never ran: %v\n", ctx.Err())
			return
		case <-tick.C:
		}
	}
}

// fromGuest handles the guest's frames until qemu closes its side.
func (s *shim) fromGuest(r io.Reader, guest *guestinit.Writer) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		typ, payload, err := guestinit.ReadFrame(br)
		if err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintf(s.console, "perch microvm-shim: control port: %v\n", err)
			}
			return
		}
		switch typ {
		case guestinit.FrameStdout:
			s.stdout.Write(payload)
		case guestinit.FrameStderr:
			s.stderr.Write(payload)
		case guestinit.FrameStarted:
			os.WriteFile(filepath.Join(s.dir, fileRunning), payload, 0o600)
		case guestinit.FrameExit:
			code, oom, err := guestinit.ParseExit(payload)
			if err != nil {
				code = -1
			}
			s.mu.Lock()
			s.reported, s.oomKilled = &code, oom
			s.mu.Unlock()
			guest.Send(guestinit.FrameBye, nil)
		}
	}
}

// commands reads DIR/ctl: "signal N" goes to the app through the init,
// "kill" ends the VM at once.
func (s *shim) commands(ctl io.Reader, qemu *os.Process, guest *guestinit.Writer) {
	sc := bufio.NewScanner(ctl)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "signal":
			if _, err := strconv.Atoi(arg); err == nil {
				guest.Send(guestinit.FrameSignal, []byte(arg))
			}
		case "kill":
			s.mu.Lock()
			s.killed = true
			s.mu.Unlock()
			qemu.Kill()
		}
	}
}

func (s *shim) fail(format string, args ...any) int {
	fmt.Fprintf(s.stderr, "perch microvm-shim: "+format+"\n", args...)
	return -1
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
