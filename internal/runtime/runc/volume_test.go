package runc

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/volume"
)

// TestVolumeOutlivesMachines: a volume bind-mounted into machines, as the
// agent mounts it (package volume: an ext4 image through a loop device).
// What one machine writes, a new machine reads after the first was
// destroyed; a machine filling it gets ENOSPC at its size; extended, the
// next machine has the room; nothing is left mounted.
func TestVolumeOutlivesMachines(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	rootfs := drivertest.BuildRootfs(t)
	vdir := filepath.Join(testStateDir(t), "volumes", "vol_test")
	mnt := filepath.Join(vdir, "mnt")
	if err := volume.Create(vdir, 32<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = volume.Destroy(vdir, mnt) })
	ctx := context.Background()
	n := 0
	// run runs one machine on the volume to its end and returns its
	// output; the machine is destroyed and the volume unmounted after.
	run := func(args ...string) string {
		t.Helper()
		if err := volume.Mount(vdir, mnt); err != nil {
			t.Fatal(err)
		}
		n++
		spec := runtime.Spec{
			ID: fmt.Sprintf("vol%d-%d", os.Getpid(), n), Rootfs: rootfs,
			Process: runtime.Process{Args: append([]string{"/app"}, args...)},
			Mounts:  []runtime.Mount{{Source: mnt, Destination: "/var/lib/data"}},
		}
		if err := d.Create(ctx, spec); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		st, err := d.Wait(ctx, spec.ID)
		if err != nil {
			t.Fatal(err)
		}
		var out string
		for _, l := range d.Logs(spec.ID) {
			if l.Stream == "stdout" {
				b, _ := os.ReadFile(l.Path)
				out = strings.TrimSpace(string(b))
			}
		}
		if st.ExitCode != 0 {
			t.Fatalf("%v exited %d: %s", args, st.ExitCode, out)
		}
		if err := d.Destroy(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		if err := volume.Unmount(mnt); err != nil {
			t.Fatal(err)
		}
		if left := leftovers(t, spec.ID); len(left) > 0 {
			t.Fatalf("machine left %v", left)
		}
		return out
	}
	filled := func(out string) (int64, string) {
		t.Helper()
		var bytes int64
		var secs float64
		var msg string
		if _, err := fmt.Sscanf(out, "filled %d %f", &bytes, &secs); err != nil {
			t.Fatalf("fill said %q", out)
		}
		fields := strings.SplitN(out, " ", 4)
		if len(fields) == 4 {
			msg = fields[3]
		}
		return bytes, msg
	}

	if out := run("write", "/var/lib/data/row", "kept across machines"); out != "wrote" {
		t.Fatalf("write: %q", out)
	}
	if out := run("read", "/var/lib/data/row"); out != "read kept across machines" {
		t.Fatalf("a new machine reads %q", out)
	}
	b, msg := filled(run("fill", "/var/lib/data/big", "64"))
	if !strings.Contains(msg, "no space left on device") || b > 32<<20 || b < 16<<20 {
		t.Fatalf("filling a 32 MiB volume with 64 MiB: wrote %d bytes, %q; want ENOSPC after less than 32 MiB", b, msg)
	}
	if online, err := volume.Extend(vdir, 96<<20); err != nil || !online {
		t.Fatalf("extend: %v %v", online, err)
	}
	b, msg = filled(run("fill", "/var/lib/data/big", "64"))
	if msg != "-" || b != 64<<20 {
		t.Fatalf("after extending to 96 MiB: wrote %d bytes, %q; want all 64 MiB", b, msg)
	}
	if out := run("read", "/var/lib/data/row"); out != "read kept across machines" {
		t.Fatalf("after extend the row reads %q", out)
	}
	if l := volume.Loops(testStateDir(t)); len(l) > 0 {
		t.Errorf("loop devices left: %v", l)
	}
}

// TestImageDirOwner: the owner a new volume takes from the image's
// directory at its destination is the one the machine sees (its range's
// base taken off), and a symlink of the image never leads the lookup out
// of the root filesystem.
func TestImageDirOwner(t *testing.T) {
	needRoot(t)
	rootfs := t.TempDir()
	const base = 3 << 20
	pg := filepath.Join(rootfs, "var", "lib", "pg")
	if err := os.MkdirAll(pg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pg, base+70, base+71); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(pg, 0o700|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/var/lib", filepath.Join(rootfs, "lib")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(rootfs, "up")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dest string
		base uint32
		want *volume.Owner
	}{
		{"/var/lib/pg", base, &volume.Owner{UID: 70, GID: 71, Mode: 0o700 | fs.ModeSetgid}},
		{"/lib/pg", base, &volume.Owner{UID: 70, GID: 71, Mode: 0o700 | fs.ModeSetgid}}, // through the image's symlink, inside the root
		{"/var/lib/pg", 0, &volume.Owner{UID: base + 70, GID: base + 71, Mode: 0o700 | fs.ModeSetgid}},
		{"/data", base, nil}, // not in the image
		// The host's /etc (root's, 0755), were "/" followed out of the root.
		{"/up/etc", 0, nil},
		{"/../../../../etc", 0, nil},
	} {
		got, err := imageDirOwner(rootfs, c.dest, c.base)
		if err != nil {
			t.Fatalf("%s: %v", c.dest, err)
		}
		if (got == nil) != (c.want == nil) || (got != nil && *got != *c.want) {
			t.Errorf("%s (base %d): owner %+v, want %+v", c.dest, c.base, got, c.want)
		}
	}
}

// TestVolumeAfterItsShimWasKilled: a machine in a user namespace whose
// shim and process were killed with SIGKILL (no exit recorded, its
// idmapped volume binds not detached) is stopped as the agent stops it;
// the agent's unmount of the volume then lets the loop device go, and the
// machine started again on the volume mounted again sees that mount (the
// one snapshots freeze and copy), not the old one its last run left.
func TestVolumeAfterItsShimWasKilled(t *testing.T) {
	needRoot(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	vdir := filepath.Join(testStateDir(t), "volumes", "vol_shimkill")
	mnt := filepath.Join(vdir, "mnt")
	if err := volume.Create(vdir, 32<<20); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = volume.Destroy(vdir, mnt) })
	if err := volume.Mount(vdir, mnt); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := runtime.Spec{
		ID: fmt.Sprintf("shimkill%d", os.Getpid()), Rootfs: drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "sleep"}},
		Mounts:  []runtime.Mount{{Source: mnt, Destination: "/var/lib/data"}},
	}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Destroy(context.Background(), spec.ID) })
	if r, err := d.readRecord(spec.ID); err != nil || r.UIDBase == 0 {
		t.Skipf("the machine has no user namespace here (%+v, %v): its volume is not idmapped", r, err)
	}
	// sameMount checks that the running machine's volume is the host's
	// mount of it (one filesystem: same device).
	sameMount := func(what string) {
		t.Helper()
		var host, guest syscall.Stat_t
		if err := syscall.Stat(mnt, &host); err != nil {
			t.Fatal(err)
		}
		pid := 0
		waitFor(t, 10*time.Second, func() bool {
			b, err := os.ReadFile(d.path(spec.ID, filePid))
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && pid > 0
		})
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/var/lib/data", pid), &guest); err != nil {
			t.Fatal(err)
		}
		if host.Dev != guest.Dev {
			t.Errorf("%s: the machine's /var/lib/data is device %d, the host's mount of the volume %d: two filesystems on one image", what, guest.Dev, host.Dev)
		}
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	sameMount("first run")

	var sh struct {
		Pid int `json:"pid"`
	}
	if b, err := os.ReadFile(d.path(spec.ID, fileShim)); err != nil || json.Unmarshal(b, &sh) != nil || sh.Pid == 0 {
		t.Fatalf("shim record: %s %v", b, err)
	}
	if err := syscall.Kill(sh.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := d.runcCmd(ctx, "kill", spec.ID, "KILL"); err != nil && !errNotRunning(err) {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		st, err := d.State(ctx, spec.ID)
		return err == nil && st.Status == runtime.StatusExited
	})
	// What the agent does with a machine found exited and then stopped.
	if err := d.Stop(ctx, spec.ID, syscall.SIGTERM, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := volume.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	if l := volume.Loops(vdir); len(l) > 0 {
		t.Errorf("after the stop and the unmount, the volume is still on a loop device: %v", l)
	}
	if err := volume.Mount(vdir, mnt); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	sameMount("started again")
	if err := d.Destroy(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if err := volume.Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	if l := volume.Loops(vdir); len(l) > 0 {
		t.Errorf("loop devices left: %v", l)
	}
}
