package microvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

// TestCreateFailureLeavesNothing: a machine that cannot be made says why
// and leaves no trace.
func TestCreateFailureLeavesNothing(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	rootfs := drivertest.BuildRootfs(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		spec runtime.Spec
		want string
	}{
		{"unknown user", runtime.Spec{ID: "badu", Rootfs: rootfs, Process: runtime.Process{Args: []string{"/app"}, User: "nobody"}}, `user "nobody"`},
		{"no command", runtime.Spec{ID: "badc", Rootfs: rootfs}, "no command"},
		{"missing rootfs", runtime.Spec{ID: "badr", Rootfs: filepath.Join(rootfs, "nope"), Process: runtime.Process{Args: []string{"/app"}}}, "not a directory"},
		{"too little memory", runtime.Spec{ID: "badm", Rootfs: rootfs, Process: runtime.Process{Args: []string{"/app"}}, MemoryMB: 64}, "at least 128"},
		{"files too big", runtime.Spec{ID: "badf", Rootfs: rootfs, Process: runtime.Process{Args: []string{"/app"}}, Files: []runtime.File{{Path: "/big", Data: make([]byte, 600<<10)}}}, "a microVM takes at most 524288 (512 KiB)"},
	} {
		err := d.Create(ctx, tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Create err = %v, want one with %q", tc.name, err, tc.want)
		}
		if left := leftovers(t, tc.spec.ID); len(left) > 0 {
			t.Errorf("%s: failed Create left %v", tc.name, left)
		}
	}
	if ids, err := d.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("List() = %v, %v; want no machines", ids, err)
	}
}

// TestAppNotFound: a command the image lacks ends the run with the
// shell's 127 and says so on the machine's stderr, which perch logs shows.
func TestAppNotFound(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	spec := runtime.Spec{ID: "notfound", Rootfs: drivertest.BuildRootfs(t), Process: runtime.Process{Args: []string{"server"}}}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	st, err := d.Wait(ctx, spec.ID)
	if err != nil || st.Status != runtime.StatusExited || st.ExitCode != guestinit.ExitNotFound {
		t.Fatalf("Wait = %+v, %v; want exited with code %d", st, err, guestinit.ExitNotFound)
	}
	b, _ := os.ReadFile(d.path(spec.ID, fileStderr))
	if !strings.Contains(string(b), "server: executable file not found") {
		t.Errorf("stderr does not say what is missing:\n%s", b)
	}
}

// TestShimKilled: the VM never runs unsupervised. When its shim dies, qemu
// dies with it; the machine shows exited with an unknown code (-1) and
// starts again.
func TestShimKilled(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	spec := runtime.Spec{
		ID: "shimkill", Rootfs: drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "serve"}, Env: []string{"PORT=8080"}},
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	st, err := d.State(ctx, spec.ID)
	if err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("State = %+v, %v; want running", st, err)
	}
	sh, ok := d.liveShim(spec.ID)
	if !ok {
		t.Fatal("no live shim after Start")
	}
	if err := syscall.Kill(sh.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for procAlive(st.Pid, d.dir(spec.ID)) {
		if time.Now().After(deadline) {
			t.Fatalf("qemu %d still runs 10s after its shim was killed", st.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusExited || st.ExitCode != -1 {
		t.Fatalf("State with shim and VM gone = %+v, %v; want exited with code -1", st, err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("State after a new Start = %+v, %v; want running", st, err)
	}
}

// TestAcceleratorRemembered: the KVM probe runs once per host and its
// answer is kept; where KVM cannot boot the guest (here, a paravirtual
// /dev/kvm) the answer is TCG with the reason, found within the probe's
// timeout.
func TestAcceleratorRemembered(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	k, initrd, err := d.bootFiles()
	if err != nil {
		t.Fatal(err)
	}
	qemu := d.qemuName()
	cache := filepath.Join(t.TempDir(), "accel.json")
	begin := time.Now()
	first, err := probeCached(context.Background(), cache, mustLookPath(t, qemu), k, initrd)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begin); took > probeTimeout+2*time.Second {
		t.Errorf("probe took %v, over its %v timeout", took, probeTimeout)
	}
	t.Logf("accelerator: %+v", first)
	if first.Accel != accelKVM && (first.Accel != accelTCG || first.Reason == "") {
		t.Errorf("probe answered %+v; want kvm, or tcg with a reason", first)
	}
	second, err := probeCached(context.Background(), cache, mustLookPath(t, qemu), k, initrd)
	if err != nil || second.Accel != first.Accel || second.Reason != first.Reason {
		t.Errorf("second answer = %+v, %v; want the remembered %+v", second, err, first)
	}
	if _, err := os.Stat(cache); err == nil && !second.ProbedAt.Equal(first.ProbedAt) {
		t.Errorf("the second answer was probed again (at %v, first at %v)", second.ProbedAt, first.ProbedAt)
	}
}

// TestGuestOutOfMemory: an app the guest kernel's OOM killer ends is
// reported out of memory, as runc's are.
func TestGuestOutOfMemory(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	spec := runtime.Spec{ID: "guestoom", Rootfs: drivertest.BuildRootfs(t), MemoryMB: MinMemoryMB,
		Process: runtime.Process{Args: []string{"/app", "alloc", "256"}}}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	st, err := d.Wait(ctx, spec.ID)
	if err != nil || st.Status != runtime.StatusExited || st.ExitCode != 137 || !st.OOMKilled {
		b, _ := os.ReadFile(d.path(spec.ID, fileStdout))
		t.Fatalf("Wait = %+v, %v; want exited with 137, OOM-killed\n%s", st, err, b)
	}
}
