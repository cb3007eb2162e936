// Package volume keeps a Perch volume on its host: an ext4 filesystem in
// a sparse image file (Dir/volume.ext4) whose size is the volume's hard
// limit (a write past it gets ENOSPC inside the machine). A runc machine
// sees it through a mount of the image by the kernel's loop device
// (direct I/O, autoclear: the loop device goes with the unmount),
// bind-mounted at the mount's destination; a microVM gets the image file
// as a virtio-blk disk that its perch-init mounts.
//
// Why an image file and not an XFS/ext4 project quota on the host's
// filesystem: a project quota needs the state dir's filesystem mounted
// with prjquota (most hosts' root filesystems are not, and changing that
// means a remount), while an image file works on any filesystem, is one
// file to move to another host, and is snapshotted by copying it (sparse,
// or a reflink where the filesystem has them). The same image is what a
// microVM needs anyway. The cost is a loop device per mounted volume and a
// filesystem inside a filesystem (bench/volume.md measures it).
//
// The API (Create, Extend, Mount, Unmount, Destroy, Snapshot, Restore)
// takes paths only and touches neither the store nor the network, so a
// disk quota on a machine's writable layer can use it too.
package volume

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ImageName is the image file's name in a volume's directory.
const ImageName = "volume.ext4"

// MinSizeBytes is the smallest volume: ext4 with a journal needs room.
const MinSizeBytes = 16 << 20

// Image is the image file of the volume kept in dir.
func Image(dir string) string { return filepath.Join(dir, ImageName) }

// Create makes dir and in it a sparse image of size bytes holding an
// empty ext4 filesystem (no blocks reserved for root: the machine gets
// the whole size). An image already there is left as it is.
func Create(dir string, size int64) error {
	if size < MinSizeBytes {
		return fmt.Errorf("volume size %d bytes is below the minimum of %d MiB", size, MinSizeBytes>>20)
	}
	img := Image(dir)
	if _, err := os.Stat(img); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create volume dir: %w", err)
	}
	tmp := img + ".new"
	if err := sparseFile(tmp, size); err != nil {
		return err
	}
	// mkfs "discards" the file (punches holes: it reads as zeros), so it
	// marks the inode tables zeroed without writing them and the kernel
	// zeroes nothing in the background after the mount (which would slow
	// the first writes down); the journal is left unwritten too. The
	// image stays sparse (under 1 MiB on disk for 1 GiB).
	if err := run("mkfs.ext4", "-F", "-q", "-m", "0", "-E", "lazy_journal_init=1", "-L", "perch-volume", tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("create volume image: %w", err)
	}
	return nil
}

func sparseFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create volume image: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size volume image: %w", err)
	}
	return f.Close()
}

// Size is the image's size in bytes (the volume's limit).
func Size(dir string) (int64, error) {
	fi, err := os.Stat(Image(dir))
	if err != nil {
		return 0, fmt.Errorf("volume image: %w", err)
	}
	return fi.Size(), nil
}

// Extend grows the volume in dir to size bytes. A size at or below the
// current one does nothing: volumes never shrink. Unmounted, the
// filesystem grows at once. Mounted, ext4 grows online where the kernel
// lets this process (online resize needs CAP_SYS_RESOURCE); otherwise
// only the image grows now, the filesystem at the next Mount, and online
// is false: the machine sees the new size after a restart.
func Extend(dir string, size int64) (online bool, err error) {
	img := Image(dir)
	cur, err := Size(dir)
	if err != nil {
		return false, err
	}
	if size <= cur {
		return true, nil
	}
	if err := ExtendImage(dir, size); err != nil {
		return false, err
	}
	if dev := loopOf(img); dev != "" {
		// Mounted: the loop device learns the new size, then ext4 grows
		// in place if it may.
		if err := run("losetup", "-c", dev); err != nil {
			return false, err
		}
		return run("resize2fs", dev) == nil, nil
	}
	return true, grow(img)
}

// ExtendImage grows only the image file to size bytes (never shrinks
// it); its filesystem grows at the next Mount or Grow. For an image
// another system has open as a disk (a running microVM), whose
// filesystem the host must not touch.
func ExtendImage(dir string, size int64) error {
	cur, err := Size(dir)
	if err != nil || size <= cur {
		return err
	}
	f, err := os.OpenFile(Image(dir), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("extend volume: %w", err)
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("extend volume image: %w", err)
	}
	return nil
}

// Grow makes the filesystem of the unmounted volume in dir fill its
// image, if an extend left it smaller (Mount does it too). Call it only
// while nothing has the image open.
func Grow(dir string) error {
	img := Image(dir)
	fs, err := fsBytes(img)
	if err != nil {
		return err
	}
	sz, err := Size(dir)
	if err != nil {
		return err
	}
	if sz-fs < 1<<20 || loopOf(img) != "" {
		return nil
	}
	if err := grow(img); err != nil {
		return fmt.Errorf("grow volume to %d bytes: %w", sz, err)
	}
	return nil
}

// grow makes the unmounted filesystem in img fill the image.
func grow(img string) error {
	if err := fsck(img); err != nil {
		return err
	}
	return run("resize2fs", img)
}

// fsBytes is the size of the filesystem in img, from its superblock.
func fsBytes(img string) (int64, error) {
	f, err := os.Open(img)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, fmt.Errorf("read superblock of %s: %w", img, err)
	}
	if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
		return 0, fmt.Errorf("%s holds no ext4 filesystem", img)
	}
	le32 := func(o int) uint64 {
		return uint64(sb[o]) | uint64(sb[o+1])<<8 | uint64(sb[o+2])<<16 | uint64(sb[o+3])<<24
	}
	blocks := le32(0x04) | le32(0x150)<<32 // s_blocks_count_lo, _hi (64bit)
	blockSize := uint64(1024) << le32(0x18)
	return int64(blocks * blockSize), nil
}

// Check checks the unmounted filesystem of the volume in dir with
// e2fsck (in user space), repairing what it safely can, and fails if it
// finds damage it cannot repair: before the host's kernel mounts an image
// a guest wrote (a microVM had it as its disk).
func Check(dir string) error {
	if dev := loopOf(Image(dir)); dev != "" {
		return nil // mounted: checked before it was
	}
	return fsck(Image(dir))
}

// fsck checks an unmounted image, repairing what it can (resize2fs
// wants a checked filesystem). Exit codes 1 and 2 mean errors fixed.
func fsck(img string) error {
	cmd := exec.Command("e2fsck", "-f", "-p", img)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() <= 2 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("e2fsck %s: %w: %s", img, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Mount mounts the volume in dir at target (made if missing) through a
// loop device. Already mounted there, it does nothing.
func Mount(dir, target string) error {
	img := Image(dir)
	if _, err := os.Stat(img); err != nil {
		return fmt.Errorf("mount volume: %w", err)
	}
	if src, ok := mountedAt(target); ok {
		if src == loopOf(img) {
			return nil
		}
		return fmt.Errorf("mount volume: %s already has %s mounted on it", target, src)
	}
	// An image extended while mounted (online resize not allowed) or
	// restored from a smaller snapshot: the filesystem grows now.
	if err := Grow(dir); err != nil {
		return fmt.Errorf("mount volume: %w", err)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount volume: %w", err)
	}
	// The loop device does direct I/O on the image: without it every
	// block is cached twice (in the volume's filesystem and the image
	// file's), and writes run at a fraction of the disk's speed
	// (bench/README.md). Detached at once, it goes with the unmount
	// (autoclear).
	b, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", img).Output()
	if err != nil {
		return fmt.Errorf("mount volume: losetup %s: %w", img, exitText(err))
	}
	dev := strings.TrimSpace(string(b))
	// A host that crashed leaves the journal to replay, which mount does;
	// errors=remount-ro keeps a damaged filesystem from growing worse.
	err = run("mount", "-t", "ext4", "-o", "noatime,errors=remount-ro", dev, target)
	if derr := run("losetup", "-d", dev); err == nil && derr != nil {
		err = derr
	}
	return err
}

func exitText(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// Unmount unmounts target if something is mounted there, which also
// frees its loop device.
func Unmount(target string) error {
	src, ok := mountedAt(target)
	if !ok {
		return nil
	}
	var err error
	for i := 0; i < 50; i++ { // a process of a machine just killed may still hold it
		if err = run("umount", target); err == nil {
			return waitDetached(src)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// waitDetached waits until the loop device dev, whose last mount is
// gone, has let go of its image: autoclear detaches it after the umount
// returns, and until then the image looks mounted (Grow skips it, Destroy
// refuses it). A dev that is not a loop device returns at once, and so
// does one still attached after 20 s (another mount of it elsewhere: its
// image stays in use, which Grow and Destroy then see). The kernel's
// detach runs later on a work queue; on a host busy with I/O it was seen
// to take over 5 s.
func waitDetached(dev string) error {
	backing := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
	if !strings.HasPrefix(filepath.Base(dev), "loop") {
		return nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(backing); errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Destroy unmounts the volume in dir from target (if mounted) and
// removes dir with its image.
func Destroy(dir, target string) error {
	if target != "" {
		if err := Unmount(target); err != nil {
			return fmt.Errorf("destroy volume: %w", err)
		}
	}
	if dev := loopOf(Image(dir)); dev != "" {
		return fmt.Errorf("destroy volume: its image is still attached to %s (mounted elsewhere?)", dev)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("destroy volume: %w", err)
	}
	return nil
}

// Snapshot copies the volume in dir into the file dst, consistent: when
// the volume is mounted at target its filesystem is frozen (fsfreeze)
// for the copy, so what was written before is in it whole. The copy is
// sparse, or a reflink where the filesystem can.
func Snapshot(dir, target, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("snapshot volume: %w", err)
	}
	if target != "" {
		if _, ok := mountedAt(target); ok {
			if err := run("fsfreeze", "-f", target); err != nil {
				return fmt.Errorf("snapshot volume: %w", err)
			}
			defer run("fsfreeze", "-u", target) //nolint:errcheck // a thaw failure is reported by the next write
		}
	}
	return copySparse(Image(dir), dst)
}

// Restore makes the volume in dir from the snapshot file src; dir must
// hold no image yet. Extend it afterwards for a bigger volume.
func Restore(src, dir string) error {
	img := Image(dir)
	if _, err := os.Stat(img); err == nil {
		return fmt.Errorf("restore volume: %s already exists", img)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("restore volume: %w", err)
	}
	return copySparse(src, img)
}

func copySparse(src, dst string) error {
	tmp := dst + ".new"
	if err := run("cp", "--sparse=always", "--reflink=auto", src, tmp); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copy volume image: %w", err)
	}
	return nil
}

// Loops lists the loop devices whose backing file is under root, as
// "/dev/loopN (file)": what a host's teardown must not leave behind.
func Loops(root string) []string {
	var out []string
	devs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range devs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
		if root == "" || strings.HasPrefix(f, root+"/") {
			dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
			out = append(out, dev+" ("+f+")")
		}
	}
	return out
}

// loopOf is the loop device backed by img, or "".
func loopOf(img string) string {
	abs, err := filepath.Abs(img)
	if err != nil {
		return ""
	}
	devs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range devs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(b)) == abs {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
		}
	}
	return ""
}

// mountedAt is the source mounted at target; false also when the mount
// table cannot be read.
func mountedAt(target string) (string, bool) {
	src, ok, err := MountedAt(target)
	return src, ok && err == nil
}

// MountedAt reports whether target is a mount point in this mount
// namespace and, if so, the source of the topmost mount there, from
// /proc/self/mountinfo (its octal escapes decoded). An error means the
// table could not be read: a caller about to remove target must not take
// it for "not mounted".
func MountedAt(target string) (string, bool, error) {
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", false, fmt.Errorf("mount table: %w", err)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false, fmt.Errorf("mount table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	src, found := "", false
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescape(fields[4]) != abs {
			continue
		}
		found = true
		for i, fld := range fields {
			if fld == "-" && i+2 < len(fields) {
				src = fields[i+2] // the last mount on top wins
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", false, fmt.Errorf("mount table: %w", err)
	}
	return src, found, nil
}

// MountedUnder lists the mount points under root, deepest first: what a
// teardown unmounts.
func MountedUnder(root string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 {
			if mp := unescape(fields[4]); strings.HasPrefix(mp, root+"/") {
				out = append([]string{mp}, out...)
			}
		}
	}
	return out
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func run(name string, args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("%s is not installed (e2fsprogs and util-linux): %w", name, err)
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Claim gives a new volume, mounted at root, to the machine about to use
// it, as Docker does with an empty named volume: if root is still as
// mkfs left it (owned by root, empty but for lost+found), it takes the
// owner and permission bits of like (the directory at the mount's
// destination in the machine's image) when like is set, else the owner
// uid:gid (the user the machine runs as). A volume that holds data, or
// whose root was given an owner already, is left as it is; so is one
// claimed for root. It reports whether it changed root.
func Claim(root string, like *Owner, uid, gid uint32) (bool, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return false, fmt.Errorf("claim volume: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid != 0 || st.Gid != 0 {
		return false, nil
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		return false, fmt.Errorf("claim volume: %w", err)
	}
	for _, e := range entries {
		if e.Name() != "lost+found" {
			return false, nil
		}
	}
	want := Owner{UID: uid, GID: gid, Mode: fi.Mode().Perm()}
	if like != nil {
		want = *like
	}
	if want.UID == 0 && want.GID == 0 && want.Mode == fi.Mode()&(fs.ModePerm|fs.ModeSetgid|fs.ModeSetuid|fs.ModeSticky) {
		return false, nil
	}
	if err := os.Chown(root, int(want.UID), int(want.GID)); err != nil {
		return false, fmt.Errorf("claim volume: %w", err)
	}
	if err := os.Chmod(root, want.Mode); err != nil { // after chown, which clears setgid
		return false, fmt.Errorf("claim volume: %w", err)
	}
	return true, nil
}

// Owner is a directory's owner and mode (permission, setuid, setgid and
// sticky bits), as Claim gives them to a volume's root.
type Owner struct {
	UID, GID uint32
	Mode     fs.FileMode
}
