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

// startSignalled starts cmd, waits for its first bytes on stdout (a
// process that is ready for SIGTERM says so), sends SIGTERM, and returns
// a channel closed when it has ended, with its stderr in log.
func startSignalled(t *testing.T, cmd *exec.Cmd, log *bytes.Buffer) <-chan struct{} {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := out.Read(make([]byte, 1)); err != nil {
		t.Fatalf("%s said nothing: %v", cmd.Path, err)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return done
}

// A dev world's process that does not stop on SIGTERM is made to print
// where it hung (Go's SIGQUIT dump, into its log) before it is killed;
// one that stops is left alone.
func TestProcessThatIgnoresSIGTERMShowsWhereItHung(t *testing.T) {
	var log bytes.Buffer
	stops := exec.Command("sh", "-c", "echo ready; exec sleep 60")
	if !waitOrQuit(stops.Process, startSignalled(t, stops, &log), 10*time.Second) {
		t.Errorf("a process that ended on SIGTERM was reported hung")
	}

	log.Reset()
	hangs := exec.Command(os.Args[0], "-test.run=^$") // TestMain's hangHere
	hangs.Env = append(os.Environ(), "PERCH_TEST_HANG=1")
	done := startSignalled(t, hangs, &log)
	began := time.Now()
	if waitOrQuit(hangs.Process, done, time.Second) {
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
