package volume

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("volumes need root (mount, loop devices)")
	}
}

// fill writes name under mnt until the filesystem is full and returns
// how much it wrote and the error that stopped it.
func fill(t *testing.T, path string) (int64, error) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{'x'}, 1<<20)
	var n int64
	for n < 1<<30 {
		w, err := f.Write(buf)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}

func TestVolumeLifecycle(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	dir, mnt := filepath.Join(root, "vol"), filepath.Join(root, "mnt")
	t.Cleanup(func() { _ = Destroy(dir, mnt) })
	if err := Create(dir, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := Mount(dir, mnt); err != nil {
		t.Fatal(err)
	}
	if err := Mount(dir, mnt); err != nil {
		t.Fatalf("second mount of the same volume: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "keep"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := fill(t, filepath.Join(mnt, "big"))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing past the size: wrote %d bytes, got %v, want ENOSPC", n, err)
	}
	if n > 32<<20 {
		t.Fatalf("wrote %d bytes into a 32 MiB volume", n)
	}
	// Online extend, then there is room again.
	if err := os.Remove(filepath.Join(mnt, "big")); err != nil {
		t.Fatal(err)
	}
	online, err := Extend(dir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !online { // no CAP_SYS_RESOURCE: the filesystem grows at the next mount
		t.Log("online resize not allowed here; remounting")
		if err := Unmount(mnt); err != nil {
			t.Fatal(err)
		}
		if err := Mount(dir, mnt); err != nil {
			t.Fatal(err)
		}
	}
	n2, err := fill(t, filepath.Join(mnt, "big"))
	if !errors.Is(err, syscall.ENOSPC) || n2 < n+24<<20 {
		t.Fatalf("after extending 32 → 64 MiB: wrote %d bytes (before: %d), err %v", n2, n, err)
	}
	os.Remove(filepath.Join(mnt, "big"))

	snap := filepath.Join(root, "snaps", "s1.ext4")
	if err := Snapshot(dir, mnt, snap); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "keep"), []byte("changed after the snapshot"), 0o644); err != nil {
		t.Fatalf("write after the snapshot (thawed?): %v", err)
	}
	if err := Unmount(mnt); err != nil {
		t.Fatal(err)
	}
	if l := Loops(root); len(l) != 0 {
		t.Fatalf("loop devices left after unmount: %v", l)
	}
	// Offline extend.
	if online, err := Extend(dir, 80<<20); err != nil || !online {
		t.Fatalf("offline extend: online %v, %v", online, err)
	}
	if sz, _ := Size(dir); sz != 80<<20 {
		t.Fatalf("size after extend = %d", sz)
	}

	dir2, mnt2 := filepath.Join(root, "vol2"), filepath.Join(root, "mnt2")
	t.Cleanup(func() { _ = Destroy(dir2, mnt2) })
	if err := Restore(snap, dir2); err != nil {
		t.Fatal(err)
	}
	if err := Mount(dir2, mnt2); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt2, "keep")); err != nil || string(b) != "data" {
		t.Fatalf("restored volume's file = %q, %v; want the snapshot's \"data\"", b, err)
	}
	if err := Destroy(dir2, mnt2); err != nil {
		t.Fatal(err)
	}
	if err := Destroy(dir, mnt); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("volume dir still there after Destroy: %v", err)
	}
	if l := Loops(root); len(l) != 0 {
		t.Fatalf("loop devices left: %v", l)
	}
	if m := MountedUnder(root); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

func TestCreateTooSmall(t *testing.T) {
	if err := Create(t.TempDir(), 1<<20); err == nil {
		t.Fatal("a 1 MiB volume was created")
	}
}

// TestCheckRefusesDamage: an image with garbage over its group
// descriptors (what a hostile guest could leave) fails Check, which
// stands between it and the host's kernel; a sound one passes.
func TestCheckRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	if err := Create(dir, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := Check(dir); err != nil {
		t.Fatalf("a new volume fails Check: %v", err)
	}
	f, err := os.OpenFile(Image(dir), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	junk := make([]byte, 64*4096)
	for i := range junk {
		junk[i] = byte(i*131 + 7)
	}
	if _, err := f.WriteAt(junk, 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := Check(dir); err == nil {
		t.Fatal("Check passed an image with garbage over its group descriptors")
	}
}

// TestExtendImageThenGrow: the image of a volume a VM has open grows
// alone; its filesystem grows at Grow, once nothing has it open.
func TestExtendImageThenGrow(t *testing.T) {
	dir := t.TempDir()
	if err := Create(dir, 32<<20); err != nil {
		t.Fatal(err)
	}
	if err := ExtendImage(dir, 64<<20); err != nil {
		t.Fatal(err)
	}
	sz, _ := Size(dir)
	fs, err := fsBytes(Image(dir))
	if err != nil || sz != 64<<20 || fs > 32<<20 {
		t.Fatalf("after ExtendImage: image %d, filesystem %d (%v); want 64 MiB and the filesystem untouched", sz, fs, err)
	}
	if err := Grow(dir); err != nil {
		t.Fatal(err)
	}
	if fs, _ := fsBytes(Image(dir)); fs < 63<<20 {
		t.Fatalf("after Grow the filesystem is %d bytes", fs)
	}
}

// TestClaim: a new volume's root takes the owner and mode it is given
// (a non-root database can write its data there); one already given an
// owner, or holding data, is left as it is.
func TestClaim(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	owner := func(p string) (uint32, uint32, fs.FileMode) {
		t.Helper()
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return st.Uid, st.Gid, fi.Mode() &^ fs.ModeDir
	}
	fresh := func(name string) string {
		t.Helper()
		dir, mnt := filepath.Join(root, name), filepath.Join(root, name+"-mnt")
		t.Cleanup(func() { _ = Destroy(dir, mnt) })
		if err := Create(dir, 32<<20); err != nil {
			t.Fatal(err)
		}
		if err := Mount(dir, mnt); err != nil {
			t.Fatal(err)
		}
		if u, g, m := owner(mnt); u != 0 || g != 0 || m != 0o755 {
			t.Fatalf("mkfs left the root %d:%d %v, want root's 0755", u, g, m)
		}
		return mnt
	}

	// No directory in the image: the machine's user, mode as mkfs made it.
	mnt := fresh("user")
	if ok, err := Claim(mnt, nil, 101, 103); err != nil || !ok {
		t.Fatalf("claim of a new volume: %v %v", ok, err)
	}
	if u, g, m := owner(mnt); u != 101 || g != 103 || m != 0o755 {
		t.Errorf("claimed for 101:103, the root is %d:%d %v", u, g, m)
	}
	// Claimed already: a later machine of another user does not take it.
	if ok, err := Claim(mnt, nil, 999, 999); err != nil || ok {
		t.Errorf("second claim changed the root (%v, %v)", ok, err)
	}

	// The image's directory: its owner and mode, setgid included.
	mnt = fresh("like")
	like := &Owner{UID: 70, GID: 71, Mode: 0o700 | fs.ModeSetgid}
	if ok, err := Claim(mnt, like, 101, 103); err != nil || !ok {
		t.Fatalf("claim like the image's directory: %v %v", ok, err)
	}
	if u, g, m := owner(mnt); u != 70 || g != 71 || m != 0o700|fs.ModeSetgid {
		t.Errorf("claimed like 70:71 02700, the root is %d:%d %v", u, g, m)
	}

	// Data on a root-owned volume (a root process wrote it): left alone.
	mnt = fresh("data")
	if err := os.WriteFile(filepath.Join(mnt, "row"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := Claim(mnt, nil, 101, 103); err != nil || ok {
		t.Errorf("claim of a volume holding data changed it (%v, %v)", ok, err)
	}
	if u, g, _ := owner(mnt); u != 0 || g != 0 {
		t.Errorf("a volume holding data was given to %d:%d", u, g)
	}
}
