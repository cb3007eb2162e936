package runc

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
)

// TestCopyFallbackWithoutNetwork runs a machine on a copied rootfs, as on a
// host without overlayfs, and with no bridge (a namespace with only lo).
func TestCopyFallbackWithoutNetwork(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	d.noOverlay = true
	destroyAll(t, d)
	spec := runtime.Spec{
		ID:      "copyfb" + strconv.Itoa(os.Getpid()),
		Rootfs:  drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "exit", "3"}},
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(d.dir(spec.ID), dirRootfs)
	if mounted, _ := isMountPoint(rootfs); mounted {
		t.Fatal("rootfs is a mount; want a copy")
	}
	if _, err := os.Stat(filepath.Join(rootfs, "app")); err != nil {
		t.Fatalf("copy has no /app: %v", err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Wait(ctx, spec.ID); err != nil || st.ExitCode != 3 {
		t.Fatalf("Wait = %+v, %v; want exit code 3", st, err)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, spec.ID); len(left) > 0 {
		t.Errorf("Destroy left behind: %v", left)
	}
	if _, err := os.Stat(filepath.Join(spec.Rootfs, "app")); err != nil {
		t.Errorf("the image lost /app: %v", err)
	}
}

// TestCreateFailureLeavesNothing: a machine that cannot be made says why
// and leaves no trace.
func TestCreateFailureLeavesNothing(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
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
		{"bad id", runtime.Spec{ID: "../x", Rootfs: rootfs, Process: runtime.Process{Args: []string{"/app"}}}, "machine id"},
	} {
		err := d.Create(ctx, tc.spec)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Create err = %v, want one with %q", tc.name, err, tc.want)
		}
		if tc.name != "bad id" {
			if left := leftovers(t, tc.spec.ID); len(left) > 0 {
				t.Errorf("%s: failed Create left %v", tc.name, left)
			}
		}
	}
	if ids, err := d.List(ctx); err != nil || len(ids) != 0 {
		t.Errorf("List() = %v, %v; want no machines", ids, err)
	}
}

// TestShimKilled: when a machine's shim dies (killed, OOM), runc still
// knows the container, so the machine shows running, stops, and its
// unknown exit code shows as -1; it then starts again.
func TestShimKilled(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	spec := runtime.Spec{
		ID:      "shimkill" + strconv.Itoa(os.Getpid()),
		Rootfs:  drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "serve"}, Env: []string{"PORT=8080"}},
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	sh, ok := d.liveShim(spec.ID)
	if !ok {
		t.Fatal("no live shim after Start")
	}
	if err := syscall.Kill(sh.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := d.waitShimGone(ctx, spec.ID, sh.Pid); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusRunning || st.Pid <= 0 {
		t.Fatalf("State with the shim gone = %+v, %v; want running", st, err)
	}
	if err := d.Stop(ctx, spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusExited || st.ExitCode != -1 {
		t.Fatalf("State after Stop = %+v, %v; want exited with code -1 (unknown)", st, err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("State after a new Start = %+v, %v; want running", st, err)
	}
}

// TestSuspendWithoutCRIU: on a host without criu, Suspend says so with
// ErrCannotSuspend and the machine keeps running and serving.
func TestSuspendWithoutCRIU(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	spec := runtime.Spec{
		ID:          "nocriu" + strconv.Itoa(os.Getpid()),
		Rootfs:      drivertest.BuildRootfs(t),
		Process:     runtime.Process{Args: []string{"/app", "serve"}, Env: []string{"PORT=8080"}},
		Suspendable: true,
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Destroy(context.Background(), spec.ID) })
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", t.TempDir()) // no criu (runc's own path is absolute)
	err := d.Suspend(ctx, spec.ID)
	if !errors.Is(err, runtime.ErrCannotSuspend) || !strings.Contains(err.Error(), "criu is not installed") {
		t.Fatalf("Suspend without criu = %v; want ErrCannotSuspend saying criu is not installed", err)
	}
	if st, err := d.State(ctx, spec.ID); err != nil || st.Status != runtime.StatusRunning {
		t.Errorf("State after a refused Suspend = %+v, %v; want running", st, err)
	}
}

// TestNoIDMapFallback: an image whose layers are on a filesystem that
// cannot be mounted idmapped (ramfs) still runs, without a user namespace
// of its own.
func TestNoIDMapFallback(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	ram := t.TempDir()
	if err := syscall.Mount("ramfs", ram, "ramfs", 0, "mode=0755"); err != nil {
		t.Skipf("no ramfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(ram, syscall.MNT_DETACH) })
	if out, err := exec.Command("cp", "-a", drivertest.BuildRootfs(t)+"/.", ram).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	spec := runtime.Spec{
		ID:      "noidmap" + strconv.Itoa(os.Getpid()),
		Layers:  []string{ram},
		Process: runtime.Process{Args: []string{"/app", "sandbox"}},
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if r, err := d.readRecord(spec.ID); err != nil || r.UIDBase != 0 || r.Copy {
		t.Fatalf("record = %+v, %v; want an overlay without a user namespace", r, err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Wait(ctx, spec.ID); err != nil || st.ExitCode != 0 {
		t.Fatalf("Wait = %+v, %v; want exit 0", st, err)
	}
	if out := stdout(t, d, spec.ID); !strings.Contains(out, "uid 0\n") || !strings.Contains(out, "keyctl EPERM\n") {
		t.Errorf("the machine printed %q; want root, and seccomp still on", out)
	}
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, spec.ID); len(left) > 0 {
		t.Errorf("Destroy left behind: %v", left)
	}
}

// TestIDRangeReclaimedAfterReboot: a reboot empties /run and with it the
// host-wide record of which machine holds which host id range; the next
// driver records its machines' ranges again before any new machine could
// take one.
func TestIDRangeReclaimedAfterReboot(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	spec := runtime.Spec{ID: "reclaim" + strconv.Itoa(os.Getpid()), Rootfs: drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "exit", "0"}}}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	r, err := d.readRecord(spec.ID)
	if err != nil || r.UIDBase < idRangeFirst {
		t.Fatalf("record = %+v, %v; want a host id range", r, err)
	}
	claim := filepath.Join(idRangeDir, strconv.Itoa(int(r.UIDBase-idRangeFirst)/idRangeSize))
	if err := os.Remove(claim); err != nil {
		t.Fatal(err)
	}
	newTestDriver(t) // the agent after the reboot
	if owner, err := os.ReadFile(claim); err != nil || string(owner) != d.dir(spec.ID) {
		t.Fatalf("claim %s = %q, %v; want the machine's directory again", claim, owner, err)
	}
	other := runtime.Spec{ID: "reclaimb" + strconv.Itoa(os.Getpid()), Rootfs: spec.Rootfs, Process: spec.Process}
	if err := d.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	if o, err := d.readRecord(other.ID); err != nil || o.UIDBase == r.UIDBase {
		t.Errorf("a new machine got range %d, %v; want another than %d", o.UIDBase, err, r.UIDBase)
	}
}
