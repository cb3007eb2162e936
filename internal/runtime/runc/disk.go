package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultDiskMB is the size of a machine's writable layer when the
// driver's Config names none: what the machine can write over its image
// before writes fail with ENOSPC.
const DefaultDiskMB = 10 << 10

// Files of a machine's writable layer.
const (
	fileDisk = "disk.img" // sparse ext4 image holding the overlay's upper and work dirs
	dirDisk  = "disk"     // its mount point
)

// makeDisk makes the machine's writable layer in dir: a sparse ext4 image
// of sizeMB (only what is written takes host disk) whose root belongs to
// the machine's root (host id root), loop-mounted at dir/disk. The
// overlay's upper and work dirs live on it, so a machine writing without
// end fills its own disk, never the host's.
func makeDisk(dir string, sizeMB int, root int) error {
	img := filepath.Join(dir, fileDisk)
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	// No journal (the layer does not outlive a host crash in use: it is
	// the machine's scratch space), inode tables left to read as zeros.
	owner := strconv.Itoa(root) + ":" + strconv.Itoa(root)
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
		"-E", "lazy_itable_init=1,nodiscard,root_owner="+owner, img).CombinedOutput()
	if err != nil {
		return fmt.Errorf("disk: mkfs.ext4: %w: %s (install e2fsprogs)", err, strings.TrimSpace(string(out)))
	}
	return mountDisk(dir)
}

// mountDisk mounts the machine's disk image at dir/disk, unless it is.
func mountDisk(dir string) error {
	mnt := filepath.Join(dir, dirDisk)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if mounted, err := isMountPoint(mnt); err != nil || mounted {
		return err
	}
	// mount(8) sets the loop device up to go with the mount (autoclear).
	// noinit_itable: the image is sparse, its inode tables read as zeros.
	out, err := exec.Command("mount", "-t", "ext4", "-o", "loop,noinit_itable,nosuid,nodev",
		filepath.Join(dir, fileDisk), mnt).CombinedOutput()
	if err != nil {
		return fmt.Errorf("disk: mount: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// unmountDisk unmounts the machine's disk, which frees its loop device.
func unmountDisk(dir string) error {
	mnt := filepath.Join(dir, dirDisk)
	if err := unmountRootfs(mnt); err != nil {
		return err
	}
	if err := os.Remove(mnt); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("disk: %w", err)
	}
	return nil
}
