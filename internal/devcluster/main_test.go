package devcluster_test

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hangHere is a process that ignores SIGTERM and never ends, for
// TestProcessThatIgnoresSIGTERMShowsWhereItHung; it says so first.
func hangHere() {
	signal.Ignore(syscall.SIGTERM)
	os.Stdout.WriteString("hanging\n")
	for {
		time.Sleep(time.Hour)
	}
}

// perchBin is the perch binary built once for the end-to-end tests: the
// agents and the CLI run from it as separate processes, as users run them.
var perchBin string

// Parallel tests. Tests that mostly wait (on deploys, machines booting,
// timeouts) call t.Parallel, and so do the deploys under a steady load
// (their requests have 10 s to answer); tests whose assertions hold a
// wall-clock bound or that are load themselves (the latency world,
// TestMultiHost's failover, the edge's limits, the budget's fast clock,
// metering intervals, health checks' intervals, autostart's burst,
// autoscaling, the logs flood), that set the environment (t.Setenv) or
// that need 6PN between hosts (see TestInternalDNSFromInsideAMachine)
// stay serial, and so run before the parallel ones, alone. Each world is
// a control plane and agents with their machines: worlds bounds how many
// run at once (PERCH_E2E_WORLDS, 2 by default: on 2 cores more only adds
// contention), while -parallel (raised to 8 unless given) bounds the
// parallel tests, some of which share a world or only wait.
var worlds chan struct{}

func TestMain(m *testing.M) {
	if os.Getenv("PERCH_TEST_HANG") == "1" {
		hangHere() // TestProcessThatIgnoresSIGTERMShowsWhereItHung's process
	}
	if os.Geteuid() != 0 {
		fmt.Println("devcluster end-to-end tests need root (runc, network namespaces); skipping")
		os.Exit(0)
	}
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		if err := flag.Set("test.parallel", "8"); err != nil {
			panic(err)
		}
	}
	n := 2
	if v := os.Getenv("PERCH_E2E_WORLDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			fmt.Printf("PERCH_E2E_WORLDS=%q: want a number of worlds at once, 1 or more\n", v)
			os.Exit(2)
		}
	}
	worlds = make(chan struct{}, n)
	dir, err := os.MkdirTemp("", "perch-e2e-bin-")
	if err != nil {
		panic(err)
	}
	perchBin = filepath.Join(dir, "perch")
	// perch-init beside perch is the guest init microVMs boot with, as
	// `make build` and scripts/demo.sh lay them out. With the whole perch
	// binary (75 MB) as the initramfs, CI's 256 MB guests panicked at boot.
	for _, b := range [][]string{
		{"go", "build", "-o", perchBin, "./cmd/perch"},
		{"env", "CGO_ENABLED=0", "go", "build", "-trimpath", "-o", filepath.Join(dir, "perch-init"), "./internal/runtime/microvm/guestinit/perchinit"},
	} {
		cmd := exec.Command(b[0], b[1:]...)
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("build %s: %v\n%s", b[len(b)-1], err, out)
			os.Exit(1)
		}
	}
	stop := watchdog()
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

// worldSlot waits for a free world slot and frees it at t's cleanup
// (cleanups run last-registered first, so after the world is closed).
func worldSlot(t *testing.T) {
	t.Helper()
	if _, ok := reserved.LoadAndDelete(t); ok {
		return
	}
	start := time.Now()
	worlds <- struct{}{}
	t.Cleanup(func() { <-worlds })
	if d := time.Since(start); d > time.Second {
		// A parallel test's time includes this wait.
		t.Logf("waited %s for a world slot", d.Round(time.Second))
	}
}

// reserved holds the tests that took their world slot in parallelFirst.
var reserved sync.Map // *testing.T → true

// parallelFirst is t.Parallel for the longest tests, rank 0 the longest:
// it takes t's world slot before pausing, while the serial tests run one
// at a time, and so t starts first when the parallel tests go, rather
// than in the random order they wake in, and does not run on alone at
// the end. Ranks below the number of world slots less one take a slot
// (one is always left for the serial tests).
func parallelFirst(t *testing.T, rank int) {
	t.Helper()
	if rank < cap(worlds)-1 {
		worlds <- struct{}{}
		reserved.Store(t, true)
		t.Cleanup(func() {
			reserved.Delete(t)
			<-worlds
		})
	}
	t.Parallel()
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// watchdog ends the test binary a minute before go test's -timeout would,
// printing which tests are still running and where each of their
// goroutines in this package waits, in a few lines. go test's own panic
// prints every goroutine (thousands of lines of NATS and HTTP internals),
// and CI keeps only the end of a failed run's output, where the test that
// hung is no longer named. stop disarms it.
func watchdog() (stop func()) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return func() {}
	}
	timeout, err := time.ParseDuration(f.Value.String())
	if err != nil || timeout <= 2*time.Minute {
		return func() {}
	}
	t := time.AfterFunc(timeout-time.Minute, func() {
		buf := make([]byte, 64<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "\ndevcluster watchdog: the tests did not end within %v; still running:\n%s", timeout-time.Minute, hungTests(buf))
		os.Exit(3)
	})
	return func() { t.Stop() }
}

// hungTests sums up a goroutine dump: each goroutine with a frame in this
// package's tests, as its wait reason and those frames.
func hungTests(dump []byte) string {
	var out strings.Builder
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		lines := strings.Split(string(g), "\n")
		var frames []string
		for i := 1; i+1 < len(lines); i += 2 {
			fn := lines[i]
			if strings.Contains(fn, "devcluster_test.") || strings.Contains(fn, "internal/devcluster.") {
				frames = append(frames, "    "+fn+"  "+strings.TrimSpace(lines[i+1]))
			}
		}
		if len(frames) > 0 {
			fmt.Fprintf(&out, "  %s\n%s\n", lines[0], strings.Join(frames, "\n"))
		}
	}
	return out.String()
}
