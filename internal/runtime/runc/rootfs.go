package runc

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/perchhq/perch/internal/volume"
	"golang.org/x/sys/unix"
)

// makeRootfs gives the machine in dir a writable root over the image's
// read-only lowers (topmost first): an overlay mount, or a full copy where
// overlayfs is not available (for instance a state dir that is itself on
// overlayfs; an image in layers is never stored there).
//
// The overlay's writable layer is on the machine's own disk (disk.go) of
// the driver's size; a copy has none.
func (d *Driver) makeRootfs(dir string, lowers []string, base uint32) (copied bool, err error) {
	rootfs := filepath.Join(dir, dirRootfs)
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return false, fmt.Errorf("runc: rootfs: %w", err)
	}
	if !d.noOverlay {
		if err := makeDisk(dir, d.diskMB, hostID(base, 0)); err != nil {
			return false, fmt.Errorf("runc: rootfs: %w", err)
		}
		err := mountOverlay(dir, filepath.Join(dir, dirDisk), lowers, base)
		if err == nil {
			return false, nil
		}
		if uerr := unmountDisk(dir); uerr != nil {
			return false, fmt.Errorf("runc: rootfs: %w", uerr)
		}
		os.Remove(filepath.Join(dir, fileDisk))
		if errors.Is(err, errNoIDMap) {
			return false, fmt.Errorf("runc: rootfs: %w", err) // Create goes on without a user namespace
		}
		d.copyOnce.Do(func() {
			d.log.Warn("overlayfs mount failed; copying each machine's root filesystem instead (slower, uses more disk)", "err", err)
		})
	}
	if len(lowers) != 1 {
		return false, fmt.Errorf("runc: rootfs: an image in %d layers needs overlayfs", len(lowers))
	}
	// cp -a keeps owners, modes, links, devices and extended attributes.
	if out, err := exec.Command("cp", "-a", lowers[0]+"/.", rootfs).CombinedOutput(); err != nil {
		return false, fmt.Errorf("runc: copy rootfs: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if base != 0 {
		if err := shiftOwners(rootfs, base); err != nil {
			return false, fmt.Errorf("runc: copy rootfs: give it the machine's ids: %w", err)
		}
	}
	return true, nil
}

// mountOverlay mounts dir/rootfs with lowers under the upper and work
// dirs in layer (the machine's disk, or dir itself for a machine made
// before machines had one); with a user namespace at base (not 0), the
// lowers are idmapped and the upper layer's root is the machine's root.
func mountOverlay(dir, layer string, lowers []string, base uint32) error {
	upper, work := filepath.Join(layer, dirUpper), filepath.Join(layer, dirWork)
	for _, p := range append([]string{upper, work}, lowers...) {
		// The option string has no escaping for these.
		if strings.ContainsAny(p, ",:") {
			return fmt.Errorf("path %q has a ',' or ':'", p)
		}
	}
	for _, p := range []string{upper, work} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chown(p, hostID(base, 0), hostID(base, 0)); err != nil {
			return err
		}
	}
	if base != 0 {
		mapped, detach, err := idmapLowers(dir, lowers, base)
		if err != nil {
			return err
		}
		defer detach() // the overlay keeps its own references to them
		lowers = mapped
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lowers, ":"), upper, work)
	if err := unix.Mount("overlay", filepath.Join(dir, dirRootfs), "overlay", 0, opts); err != nil {
		os.RemoveAll(upper)
		os.RemoveAll(work)
		return fmt.Errorf("mount overlay: %w", err)
	}
	return nil
}

// ensureRootfs remounts the overlay of a machine whose mount is gone, as
// after a host reboot.
func (d *Driver) ensureRootfs(id string, r record) error {
	rootfs := d.path(id, dirRootfs)
	if err := reclaimIDRange(r.UIDBase, d.dir(id)); err != nil {
		return fmt.Errorf("runc: %s: %w", id, err)
	}
	mounted, err := isMountPoint(rootfs)
	if err != nil {
		return err
	}
	if !mounted && !r.Copy {
		layer := d.dir(id)
		if r.Disk {
			if err := mountDisk(layer); err != nil {
				return fmt.Errorf("runc: %s: %w", id, err)
			}
			layer = filepath.Join(layer, dirDisk)
		}
		if err := mountOverlay(d.dir(id), layer, r.Spec.Lowers(), r.UIDBase); err != nil {
			return fmt.Errorf("runc: %s: %w", id, err)
		}
	}
	if r.UIDBase != 0 {
		if err := d.bindRoot(id); err != nil {
			return fmt.Errorf("runc: %s: %w", id, err)
		}
	}
	return nil
}

// unmountRootfs undoes the overlay mount; a busy mount is detached so it
// goes once its last user does.
func unmountRootfs(rootfs string) error {
	mounted, err := isMountPoint(rootfs)
	if err != nil || !mounted {
		return err
	}
	err = unix.Unmount(rootfs, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(rootfs, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("runc: unmount %s: %w", rootfs, err)
	}
	return nil
}

// isMountPoint reports whether path is a mount point in this mount
// namespace (the mount table's reader is the volume package's).
func isMountPoint(path string) (bool, error) {
	_, mounted, err := volume.MountedAt(path)
	if err != nil {
		return false, fmt.Errorf("runc: %w", err)
	}
	return mounted, nil
}
