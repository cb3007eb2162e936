package runc

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
	"github.com/perchhq/perch/internal/volume"
)

// A machine in a user namespace (userns.go) sees the image's shared
// layers through idmapped mounts, and its root filesystem where its root
// can reach it.

// errNoIDMap is returned (wrapped) when the image's layers are on a
// filesystem that cannot be mounted idmapped.
var errNoIDMap = errors.New("the image store's filesystem does not support idmapped mounts (ext4, xfs, btrfs and tmpfs do)")

// withUserns opens a user namespace mapping ids 0..idRangeSize-1 to
// base..., for idmapped mounts, and calls f with its descriptor. The
// namespace is made by a child process stopped at its exec (ptrace), so
// nothing runs in it.
func withUserns(base uint32, f func(fd int) error) error {
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	cmd := exec.Command(exe)
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER,
		UidMappings: m, GidMappings: m,
		GidMappingsEnableSetgroups: true,
		Ptrace:                     true,
		Pdeathsig:                  syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("user namespace: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("user namespace: %w", err)
	}
	defer unix.Close(fd)
	return f(fd)
}

// idmapMount binds src read-only at dst with the ids of user namespace
// userns: a file of uid u in src is uid base+u at dst.
func idmapMount(src, dst string, userns int) error {
	return idmapBind(src, dst, userns, unix.MOUNT_ATTR_RDONLY)
}

// idmapBind is idmapMount with the mount attributes attr (read-only or
// not) besides the idmap and nodev.
func idmapBind(src, dst string, userns int, attr uint64) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", src, err)
	}
	defer unix.Close(tree)
	ma := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NODEV | attr, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &ma); err != nil {
		return fmt.Errorf("%w: idmap %s: %w", errNoIDMap, src, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount %s: %w", dst, err)
	}
	return nil
}

// idmapLowers mounts each of lowers idmapped for base under dir/lowers
// and returns their paths, and a function that detaches them: once the
// overlay is mounted over them it holds them itself.
func idmapLowers(dir string, lowers []string, base uint32) ([]string, func(), error) {
	root := filepath.Join(dir, dirLowers)
	var mounted []string
	detach := func() {
		for _, m := range mounted {
			unix.Unmount(m, unix.MNT_DETACH)
		}
		os.RemoveAll(root) // only empty directories once detached
	}
	err := withUserns(base, func(userns int) error {
		for i, l := range lowers {
			dst := filepath.Join(root, strconv.Itoa(i))
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
			if err := idmapMount(l, dst, userns); err != nil {
				return err
			}
			mounted = append(mounted, dst)
		}
		return nil
	})
	if err != nil {
		detach()
		return nil, nil, err
	}
	return mounted, detach, nil
}

// shiftOwners gives every file under root the ids of the machine's range
// (uid u becomes base+u), for a root filesystem copied rather than
// mounted.
func shiftOwners(root string, base uint32) error {
	return filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Uid >= idRangeSize || st.Gid >= idRangeSize {
			return nil
		}
		mode := fi.Mode()
		if err := os.Lchown(p, int(base+st.Uid), int(base+st.Gid)); err != nil {
			return err
		}
		// chown clears setuid and setgid bits; put them back.
		if mode&(fs.ModeSetuid|fs.ModeSetgid) != 0 && mode&fs.ModeSymlink == 0 {
			return os.Chmod(p, mode)
		}
		return nil
	})
}

// rootsDir holds a bind mount of the root filesystem of every machine
// with a user namespace, the bundle's root: runc mounts it from inside
// the namespace, as the machine's root, which must be able to reach it.
// The state dir's own ancestors may be closed to other users (0700), so
// the bind lives in a directory any user may pass (0711) but not list.
const rootsDir = "/run/perch/roots"

// bundleRoot is the root filesystem's path as runc is given it.
func (d *Driver) bundleRoot(id string, base uint32) string {
	if base == 0 {
		return d.path(id, dirRootfs)
	}
	return d.rootBind(id)
}

// rootBind is where machine id's root filesystem is bound for runc.
func (d *Driver) rootBind(id string) string {
	sum := sha256.Sum256([]byte(d.dir(id)))
	return filepath.Join(rootsDir, id+"-"+hex.EncodeToString(sum[:6]))
}

// bindRoot binds machine id's root filesystem at rootBind, if it is not
// there already.
func (d *Driver) bindRoot(id string) error {
	dst := d.rootBind(id)
	for _, p := range []string{filepath.Dir(rootsDir), rootsDir, dst} {
		if err := os.MkdirAll(p, 0o711); err != nil {
			return fmt.Errorf("bind root: %w", err)
		}
		if err := os.Chmod(p, 0o711); err != nil {
			return fmt.Errorf("bind root: %w", err)
		}
	}
	if mounted, err := isMountPoint(dst); err != nil || mounted {
		return err
	}
	if err := unix.Mount(d.path(id, dirRootfs), dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind root at %s: %w", dst, err)
	}
	return nil
}

// unbindRoot undoes bindRoot.
func (d *Driver) unbindRoot(id string) error {
	dst := d.rootBind(id)
	if err := unmountRootfs(dst); err != nil {
		return err
	}
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("runc: %w", err)
	}
	return nil
}

// dirVolumes holds, for a machine in a user namespace, each volume's
// directory mounted idmapped (volume i at volumes/i): a file of uid u on
// the volume is the machine's uid u, whichever machine mounts it next and
// whatever its range. They live while the machine runs: the shim detaches
// them when the container ends, so the agent's unmount of the volume
// then frees its loop device.
const dirVolumes = "volumes"

// volumeBind is where the bundle binds volume i of a machine from.
func (d *Driver) volumeBind(id string, i int) string {
	return filepath.Join(d.path(id, dirVolumes), strconv.Itoa(i))
}

// mapVolumes mounts each of the machine's volumes idmapped for its range
// (at start: the agent mounts the volumes before it).
func (d *Driver) mapVolumes(id string, r record) error {
	if r.UIDBase == 0 || len(r.Spec.Mounts) == 0 {
		return nil
	}
	return withUserns(r.UIDBase, func(userns int) error {
		for i, m := range r.Spec.Mounts {
			dst := d.volumeBind(id, i)
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return fmt.Errorf("volume %s: %w", m.Destination, err)
			}
			if mounted, err := isMountPoint(dst); err != nil {
				continue
			} else if mounted {
				if sameDevice(dst, m.Source) {
					continue
				}
				// Left by a run whose shim was killed, onto a mount of
				// the volume that is gone: the machine would write to
				// that old filesystem, not the one the host mounts now.
				if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("volume %s: detach the last run's bind: %w", m.Destination, err)
				}
			}
			if err := idmapBind(m.Source, dst, userns, unix.MOUNT_ATTR_NOSUID); err != nil {
				return fmt.Errorf("volume %s: %w", m.Destination, err)
			}
		}
		return nil
	})
}

// sameDevice says whether paths a and b are on one filesystem.
func sameDevice(a, b string) bool {
	var sa, sb unix.Stat_t
	return unix.Stat(a, &sa) == nil && unix.Stat(b, &sb) == nil && sa.Dev == sb.Dev
}

// unmapVolumes detaches what mapVolumes mounted in the machine directory
// dir.
func unmapVolumes(dir string) {
	vols, _ := filepath.Glob(filepath.Join(dir, dirVolumes, "*"))
	for _, v := range vols {
		unix.Unmount(v, unix.MNT_DETACH)
		os.Remove(v)
	}
}

// claimVolumes gives each of the machine's new volumes (a root still as
// mkfs left it) the owner and mode of the directory at its destination
// in the image, or, where the image has none, the user the machine runs
// as (volume.Claim): a database run as a non-root user, Debian's redis
// or postgres, can then write its data there as it does on a host. The
// ids written are the machine's own: the volume's idmapped mount shows
// them unchanged inside.
func claimVolumes(rootfs string, mounts []runtime.Mount, u imageuser.User, base uint32) error {
	for _, m := range mounts {
		if m.Source == "" {
			continue // Create refuses it, saying so
		}
		like, err := imageDirOwner(rootfs, m.Destination, base)
		if err != nil {
			return fmt.Errorf("volume %s: %w", m.Destination, err)
		}
		if _, err := volume.Claim(m.Source, like, u.UID, u.GID); err != nil {
			return fmt.Errorf("volume %s: %w", m.Destination, err)
		}
	}
	return nil
}

// imageDirOwner returns the owner (as the machine sees it) and mode of
// the directory dest in the machine's root filesystem, nil if there is
// none. dest resolves as inside the machine (RESOLVE_IN_ROOT: no symlink
// of the image leads out of rootfs).
func imageDirOwner(rootfs, dest string, base uint32) (*volume.Owner, error) {
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, dest, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s in the image: %w", dest, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, nil
	}
	uid, gid := st.Uid, st.Gid
	if base != 0 { // the root's files are in the machine's range
		if uid < base || gid < base || uid-base >= idRangeSize || gid-base >= idRangeSize {
			return nil, nil
		}
		uid, gid = uid-base, gid-base
	}
	mode := fs.FileMode(st.Mode & 0o777)
	if st.Mode&unix.S_ISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return &volume.Owner{UID: uid, GID: gid, Mode: mode}, nil
}
