package microvm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/perchhq/perch/internal/image"
	"golang.org/x/sys/unix"
)

// Disk sizing: the image's files, as much again for the machine to write,
// and never less than minDisk. The file is sparse, so the room costs
// nothing until written.
const (
	minDisk   = 1 << 30
	diskExtra = 256 << 20
)

// baseDisk returns the ext4 disk made from the image root filesystem in
// lowers (its layers, topmost first, or one unpacked tree), making it once
// per image (the image store never changes a layer or a tree). mkfs.ext4
// -d copies a tree; an image in layers is first mounted read-only as the
// overlay of its layers, for as long as the copy takes.
func (d *Driver) baseDisk(lowers []string) (string, error) {
	var key string
	for _, l := range lowers {
		k, err := diskKey(l)
		if err != nil {
			return "", err
		}
		key += k
	}
	if len(lowers) > 1 {
		sum := sha256.Sum256([]byte(key))
		key = hex.EncodeToString(sum[:])[:20]
	}
	dir := filepath.Join(d.cacheDir(), "disks")
	out := filepath.Join(dir, key+".ext4")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	// One builder per disk, also across processes; the lock file stays, as
	// removing it would let a late comer lock a new one beside a waiter.
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", fmt.Errorf("microvm: disk: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return "", fmt.Errorf("microvm: disk: %w", err)
	}
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	// A layer store names layers by short symlinks; mkfs.ext4 -d and the
	// size walk want the directory itself.
	rootfs, err := filepath.EvalSymlinks(lowers[0])
	if err != nil {
		return "", fmt.Errorf("microvm: disk: %w", err)
	}
	if len(lowers) > 1 {
		merged, unmount, err := image.MountLayers(dir, lowers)
		if err != nil {
			return "", fmt.Errorf("microvm: disk: %w", err)
		}
		defer unmount()
		rootfs = merged
	}
	used, err := treeSize(rootfs)
	if err != nil {
		return "", fmt.Errorf("microvm: disk from %s: %w", rootfs, err)
	}
	size := max(int64(minDisk), 2*used+diskExtra)
	tmp := out + ".tmp"
	os.Remove(tmp)
	// Inode tables and journal are written now, once per image, so the
	// guest's kernel has no background zeroing to do on every boot.
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-d", rootfs, "-L", "perch-root",
		"-E", "lazy_itable_init=0,lazy_journal_init=0", tmp, strconv.FormatInt(size>>10, 10)+"k")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("microvm: mkfs.ext4 -d %s: %w: %s", rootfs, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("microvm: disk: %w", err)
	}
	d.log.Debug("image disk made", "lowers", len(lowers), "disk", out, "bytes", size, "used", used)
	return out, nil
}

// diskKey names the disk of rootfs: its path and the identity of its
// directory, so a path reused for another tree gets another disk.
func diskKey(rootfs string) (string, error) {
	abs, err := filepath.Abs(rootfs)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("microvm: rootfs: %w", err)
	}
	h := sha256.New()
	fmt.Fprintln(h, abs, fi.ModTime().UnixNano())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		fmt.Fprintln(h, st.Dev, st.Ino)
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// treeSize is what the files under root take, in whole 4 KiB blocks.
func treeSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n += 4096
		if e.Type().IsRegular() {
			fi, err := e.Info()
			if err != nil {
				return err
			}
			n += (fi.Size() + 4095) &^ 4095
		}
		return nil
	})
	return n, err
}

// machineDisk makes the machine's own disk: a qcow2 overlay whose writes
// stay in the machine's directory, over the shared read-only base.
func machineDisk(base, path string) error {
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("microvm: qemu-img create: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}
