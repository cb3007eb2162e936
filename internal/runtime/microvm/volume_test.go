package microvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/volume"
)

// TestVolumeDisk: a volume's image attached as a virtio disk and mounted
// by perch-init: what one VM writes there, the next VM reads; a write
// past the volume's size gets ENOSPC inside the VM. The app runs as a
// non-root user, which the new volume's root is given to (volume.Claim).
func TestVolumeDisk(t *testing.T) {
	needVM(t)
	t.Parallel()
	d := newTestDriver(t)
	rootfs := drivertest.BuildRootfs(t)
	vdir := filepath.Join(t.TempDir(), "vol")
	if err := volume.Create(vdir, 32<<20); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := 0
	run := func(args ...string) string {
		t.Helper()
		n++
		spec := runtime.Spec{ID: fmt.Sprintf("vmvol%d", n), Rootfs: rootfs,
			Process: runtime.Process{Args: append([]string{"/app"}, args...), User: "1000:1000"},
			Mounts:  []runtime.Mount{{Image: volume.Image(vdir), Destination: "/data"}}}
		if err := d.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
		defer d.Destroy(context.Background(), spec.ID)
		if err := d.Start(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		st, err := d.Wait(ctx, spec.ID)
		b, _ := os.ReadFile(d.path(spec.ID, fileStdout))
		if err != nil || st.ExitCode != 0 {
			e, _ := os.ReadFile(d.path(spec.ID, fileStderr))
			t.Fatalf("%v: %+v %v\n%s%s", args, st, err, b, e)
		}
		return strings.TrimSpace(string(b))
	}
	// One VM (each boot costs seconds under TCG): it fills the volume,
	// which stops at ENOSPC; the host then finds the data in the image.
	out := run("fill", "/data/big", "64")
	if !strings.Contains(out, "no space left on device") {
		t.Fatalf("filling a 32 MiB volume from the VM: %q; want ENOSPC", out)
	}
	var wrote int64
	fmt.Sscanf(out[strings.Index(out, "filled"):], "filled %d", &wrote)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := volume.Mount(vdir, mnt); err != nil {
		t.Fatal(err)
	}
	defer volume.Unmount(mnt)
	fi, err := os.Stat(filepath.Join(mnt, "big"))
	if err != nil || wrote < 16<<20 || fi.Size() < 16<<20 {
		t.Fatalf("the VM's file in the volume image: %v %v; the VM wrote %d bytes", fi, err, wrote)
	}
	for _, p := range []string{mnt, filepath.Join(mnt, "big")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("%s is owned by %d:%d, want the app's user 1000:1000", p, st.Uid, st.Gid)
		}
	}
}
