package devcluster

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A dev world's process that does not stop on SIGTERM is made to print
// where it hung (Go's SIGQUIT dump, into its log) before it is killed;
// one that stops is left alone.
func TestProcessThatIgnoresSIGTERMShowsWhereItHung(t *testing.T) {
	start := func(hang bool) (*exec.Cmd, *bytes.Buffer, chan struct{}) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		if hang {
			cmd.Env = append(os.Environ(), "PERCH_TEST_HANG=1")
		} else {
			cmd = exec.Command("sleep", "60")
		}
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		if hang {
			cmd.Stdout = pw
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		if hang { // wait until it ignores SIGTERM
			b := make([]byte, 8)
			if _, err := pr.Read(b); err != nil {
				t.Fatalf("the hanging process said nothing: %v", err)
			}
		}
		pr.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		return cmd, &log, done
	}

	cmd, _, done := start(false)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if !waitOrQuit(cmd.Process, done, 10*time.Second) {
		t.Errorf("a process that ended on SIGTERM was reported hung")
	}

	cmd, log, done := start(true)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	began := time.Now()
	if waitOrQuit(cmd.Process, done, time.Second) {
		t.Fatalf("a process that ignores SIGTERM was reported stopped")
	}
	select {
	case <-done:
	default:
		t.Fatalf("waitOrQuit returned with the process still running")
	}
	if !strings.Contains(log.String(), "devcluster_test.hangHere") {
		t.Errorf("its log does not show where it hung:\n%s", log.String())
	}
	t.Logf("stopped in %s; its log holds %d bytes of stacks", time.Since(began).Round(time.Millisecond), log.Len())
}
