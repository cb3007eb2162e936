package runc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
)

// TestSandbox runs the test app's probes inside a machine, as an attacker
// would: syscalls outside the seccomp profile are refused, root inside is
// an unprivileged user on the host, a fork bomb stops at the pids limit
// while the host stays responsive, a machine over its memory is
// OOM-killed and reported so, and the writable layer is bounded.
func TestSandbox(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	d.diskMB = 64 // small enough to fill quickly
	destroyAll(t, d)
	rootfs := drivertest.BuildRootfs(t)
	pid := strconv.Itoa(os.Getpid())
	run := func(t *testing.T, name string, mut func(*runtime.Spec), args ...string) string {
		t.Helper()
		spec := runtime.Spec{ID: name + pid, Rootfs: rootfs, Process: runtime.Process{Args: append([]string{"/app"}, args...)}}
		if mut != nil {
			mut(&spec)
		}
		if err := d.Create(ctx(t), spec); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
		if err := d.Start(ctx(t), spec.ID); err != nil {
			t.Fatal(err)
		}
		return spec.ID
	}

	t.Run("Syscalls", func(t *testing.T) {
		id := run(t, "sbxsys", nil, "sandbox")
		st, err := d.Wait(ctx(t), id)
		if err != nil || st.ExitCode != 0 {
			t.Fatalf("Wait = %+v, %v; want exit 0", st, err)
		}
		out := stdout(t, d, id)
		t.Logf("probes:\n%s", out)
		for _, want := range []string{
			"uid 0", "gid 0",
			"keyctl EPERM", "add_key EPERM", "mount EPERM", "umount2 EPERM",
			"unshare-user EPERM", "unshare-net EPERM",
			"bind80 allowed", "app-owner 0:0", "run-postgresql-owner 1000:1000",
			"NoNewPrivs: 1", "Seccomp: 2",
		} {
			if !strings.Contains(out, want+"\n") {
				t.Errorf("probe %q missing from the machine's output", want)
			}
		}
	})

	t.Run("UnprivilegedOnHost", func(t *testing.T) {
		// Two machines: each one's root is its own unprivileged host uid.
		uids := map[int]bool{}
		for _, name := range []string{"sbxuid", "sbxuidb"} {
			id := run(t, name, nil, "sleep")
			uid := unprivilegedRoot(t, d, id)
			if uids[uid] {
				t.Errorf("two machines share host uid %d", uid)
			}
			uids[uid] = true
		}
	})

	t.Run("SuspendableUnprivileged", func(t *testing.T) {
		// A machine that may be suspended runs in its user namespace too,
		// is in it again after each resume, and keeps its network and
		// memory: twice, so a resumed machine suspends again.
		n := hostnettest.New(t).Net(t)
		id := run(t, "sbxsus", func(s *runtime.Spec) {
			s.Suspendable, s.Net = true, n
			s.Process.Args = []string{"/app", "serve"}
			s.Process.Env = []string{"PORT=8080"}
		})
		uid := unprivilegedRoot(t, d, id)
		url := "http://" + n.Addr.Addr().String() + ":8080/count"
		for cycle := 1; cycle <= 2; cycle++ {
			if got := httpCount(t, "POST", url); got != strconv.Itoa(cycle) {
				t.Fatalf("POST /count = %q before suspension %d; want %d", got, cycle, cycle)
			}
			if err := d.Suspend(ctx(t), id); err != nil {
				if errors.Is(err, runtime.ErrCannotSuspend) && strings.Contains(err.Error(), "not installed") {
					t.Skip(err)
				}
				t.Fatalf("Suspend %d: %v", cycle, err)
			}
			if st, err := d.State(ctx(t), id); err != nil || st.Status != runtime.StatusSuspended {
				t.Fatalf("State after Suspend %d = %+v, %v; want suspended", cycle, st, err)
			}
			if err := d.Start(ctx(t), id); err != nil {
				t.Fatalf("resume %d: %v", cycle, err)
			}
			if got := unprivilegedRoot(t, d, id); got != uid {
				t.Errorf("after resume %d the machine's root is host uid %d; want %d as before", cycle, got, uid)
			}
			if got := httpCount(t, "GET", url); got != strconv.Itoa(cycle) {
				t.Fatalf("GET /count = %q after resume %d; want %d (the count from before)", got, cycle, cycle)
			}
		}
		// A snapshot that cannot be restored (its memory pages lost, found
		// only after CRIU has made the namespaces and the network moved
		// in): ErrResumeFailed, and the next start boots afresh, again
		// unprivileged and reachable.
		if err := d.Suspend(ctx(t), id); err != nil {
			t.Fatalf("Suspend: %v", err)
		}
		pages, _ := filepath.Glob(filepath.Join(d.path(id, dirSnapshot), "pages-*.img"))
		if len(pages) == 0 {
			t.Fatal("no pages-*.img in the snapshot")
		}
		for _, p := range pages {
			os.Remove(p)
		}
		if err := d.Start(ctx(t), id); !errors.Is(err, runtime.ErrResumeFailed) {
			t.Fatalf("Start from a broken snapshot = %v; want ErrResumeFailed", err)
		}
		if err := d.Start(ctx(t), id); err != nil {
			t.Fatalf("Start after a failed resume: %v", err)
		}
		if got := unprivilegedRoot(t, d, id); got != uid {
			t.Errorf("after a fresh boot the machine's root is host uid %d; want %d", got, uid)
		}
		if got := httpCount(t, "GET", url); got != "0" {
			t.Errorf("GET /count = %q after a fresh boot; want 0", got)
		}
	})

	t.Run("ForkBomb", func(t *testing.T) {
		id := run(t, "sbxfork", nil, "forkbomb", "3")
		// While the bomb holds every pid it could get, the host still
		// starts processes promptly.
		var slowest time.Duration
		re := regexp.MustCompile(`forked (\d+) failed (.*)`)
		var m []string
		waitFor(t, 30*time.Second, func() bool {
			start := time.Now()
			if err := exec.Command("true").Run(); err != nil {
				t.Fatalf("the host cannot start a process during the fork bomb: %v", err)
			}
			slowest = max(slowest, time.Since(start))
			m = re.FindStringSubmatch(stdout(t, d, id))
			return m != nil
		})
		n, _ := strconv.Atoi(m[1])
		t.Logf("fork bomb: %d processes, then %q; slowest host process start %v", n, m[2], slowest)
		if n >= PidsLimit || n < PidsLimit/2 {
			t.Errorf("the fork bomb made %d processes; want fewer than the pids limit %d", n, PidsLimit)
		}
		if !strings.Contains(m[2], "resource temporarily unavailable") {
			t.Errorf("fork failed with %q; want EAGAIN (the pids limit)", m[2])
		}
		if slowest > 2*time.Second {
			t.Errorf("a host process took %v to run during the fork bomb", slowest)
		}
		if st, err := d.Wait(ctx(t), id); err != nil || st.ExitCode != 0 {
			t.Errorf("Wait = %+v, %v; want exit 0 once the bomb is over", st, err)
		}
	})

	t.Run("OutOfMemory", func(t *testing.T) {
		id := run(t, "sbxoom", func(s *runtime.Spec) { s.MemoryMB = 64 }, "alloc", "256")
		st, err := d.Wait(ctx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if !st.OOMKilled || st.ExitCode != 137 {
			b, _ := os.ReadFile(d.Logs(id)[1].Path)
			t.Fatalf("State = %+v; want OOM-killed with exit code 137\n%s\n%s", st, stdout(t, d, id), b)
		}
		// A machine killed otherwise is not reported as out of memory.
		id = run(t, "sbxkill", nil, "sleep")
		if err := d.Stop(ctx(t), id, 9, time.Second); err != nil {
			t.Fatal(err)
		}
		if st, err := d.State(ctx(t), id); err != nil || st.OOMKilled || st.ExitCode != 137 {
			t.Fatalf("State of a killed machine = %+v, %v; want exit 137, not OOM", st, err)
		}
	})
}

// TestSandboxDisk: a machine writing without end fills its own disk
// (writes fail with ENOSPC inside) and takes no more of the host's.
func TestSandboxDisk(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	d.diskMB = 64
	destroyAll(t, d)
	spec := runtime.Spec{ID: "sbxdisk" + strconv.Itoa(os.Getpid()), Rootfs: drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "fillup", "/big"}}}
	if err := d.Create(ctx(t), spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Wait(ctx(t), spec.ID); err != nil || st.ExitCode != 0 {
		t.Fatalf("Wait = %+v, %v; want exit 0", st, err)
	}
	out := stdout(t, d, spec.ID)
	m := regexp.MustCompile(`wrote (\d+) MiB: (.*)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the machine printed %q; want how much it wrote", out)
	}
	n, _ := strconv.Atoi(m[1])
	t.Logf("the machine wrote %d MiB, then: %s", n, m[2])
	if !strings.Contains(m[2], "no space left on device") || n > 64 || n < 32 {
		t.Errorf("wrote %d MiB then %q; want ENOSPC before 64 MiB", n, m[2])
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(d.dir(spec.ID), fileDisk), &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 70<<20 {
		t.Errorf("the machine's disk takes %d MiB of the host's; want at most its 64 MiB", used>>20)
	}
	if err := d.Destroy(ctx(t), spec.ID); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, spec.ID); len(left) > 0 {
		t.Errorf("Destroy left behind: %v", left)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// stdout is what machine id has printed so far.
func stdout(t *testing.T, d *Driver, id string) string {
	t.Helper()
	b, err := os.ReadFile(d.Logs(id)[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unprivilegedRoot returns the host uid of running machine id's process,
// which runs as root inside, and fails the test unless its uid and gid
// are in the unprivileged ranges machines get.
func unprivilegedRoot(t *testing.T, d *Driver, id string) int {
	t.Helper()
	st, err := d.State(ctx(t), id)
	if err != nil || st.Pid <= 0 || st.Status != runtime.StatusRunning {
		t.Fatalf("State = %+v, %v; want running", st, err)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(st.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	uid, gid := -1, -1
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" {
			uid, _ = strconv.Atoi(f[1])
		} else if len(f) > 1 && f[0] == "Gid:" {
			gid, _ = strconv.Atoi(f[1])
		}
	}
	t.Logf("%s: root inside is uid %d gid %d on the host", id, uid, gid)
	if uid < idRangeFirst || gid < idRangeFirst {
		t.Errorf("the machine's root is host uid %d gid %d; want an unprivileged id >= %d", uid, gid, idRangeFirst)
	}
	return uid
}

// httpCount sends method to the test app's /count at url, trying again
// for a while if the machine is not answering yet, and returns the body.
func httpCount(t *testing.T, method, url string) string {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var req *http.Request
		if req, err = http.NewRequest(method, url, nil); err != nil {
			t.Fatal(err)
		}
		var resp *http.Response
		if resp, err = client.Do(req); err != nil {
			continue
		}
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == http.StatusOK {
			return string(b)
		}
		err = fmt.Errorf("%s: %v", resp.Status, rerr)
	}
	t.Fatalf("%s %s: %v", method, url, err)
	return ""
}
