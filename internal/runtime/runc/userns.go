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

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// Every machine runs in a user namespace of its own: its uids and gids
// 0..idRangeSize-1 are host ids base..base+idRangeSize-1, a range no
// other machine on the host has, so root in a machine is an unprivileged
// user on the host and machines cannot touch one another's files or
// processes. The image's layers, shared and owned by the host's root,
// are mounted idmapped (each lower dir bound with the machine's mapping:
// the image's uid 0 reads as base, its www-data 33 as base+33), under an
// overlay whose upper layer is owned by the mapped ids.
const (
	idRangeSize  = 65536
	idRangeFirst = 1 << 30 // far above the ids of host users and subuid ranges
	idRangeSlots = 16384   // up to 1<<30 + 1<<30: below the 32-bit limit
	idRangeDir   = "/run/perch/idranges"
)

// errNoIDMap is returned (wrapped) when the image's layers are on a
// filesystem that cannot be mounted idmapped.
var errNoIDMap = errors.New("the image store's filesystem does not support idmapped mounts (ext4, xfs, btrfs and tmpfs do)")

// allocIDRange claims a free range of host ids for the machine in dir,
// host-wide (every driver on the host, whatever its state dir, draws from
// idRangeDir), and returns its first id. A claim whose machine directory
// is gone (a machine lost without a destroy) is taken over.
func allocIDRange(dir string) (uint32, error) {
	if err := os.MkdirAll(idRangeDir, 0o700); err != nil {
		return 0, fmt.Errorf("id range: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(idRangeDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 0, fmt.Errorf("id range: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return 0, fmt.Errorf("id range: %w", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	for slot := 0; slot < idRangeSlots; slot++ {
		claim := filepath.Join(idRangeDir, strconv.Itoa(slot))
		owner, err := os.ReadFile(claim)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return 0, fmt.Errorf("id range: %w", err)
		case string(owner) == dir:
		default:
			if _, err := os.Stat(string(owner)); err == nil || !errors.Is(err, fs.ErrNotExist) {
				continue // in use
			}
		}
		if err := os.WriteFile(claim, []byte(dir), 0o600); err != nil {
			return 0, fmt.Errorf("id range: %w", err)
		}
		return uint32(idRangeFirst + slot*idRangeSize), nil
	}
	return 0, fmt.Errorf("id range: all %d ranges of host ids are in use; destroy machines", idRangeSlots)
}

// releaseIDRange gives back the range at base if the machine in dir holds it.
func releaseIDRange(base uint32, dir string) {
	if base < idRangeFirst {
		return
	}
	claim := filepath.Join(idRangeDir, strconv.Itoa(int(base-idRangeFirst)/idRangeSize))
	if owner, err := os.ReadFile(claim); err == nil && string(owner) == dir {
		os.Remove(claim)
	}
}

// reclaimIDRange records again, after a host reboot emptied /run, that
// the machine in dir holds the range at base.
func reclaimIDRange(base uint32, dir string) error {
	if base < idRangeFirst {
		return nil
	}
	if err := os.MkdirAll(idRangeDir, 0o700); err != nil {
		return fmt.Errorf("id range: %w", err)
	}
	claim := filepath.Join(idRangeDir, strconv.Itoa(int(base-idRangeFirst)/idRangeSize))
	if owner, err := os.ReadFile(claim); err == nil && string(owner) != dir {
		if _, err := os.Stat(string(owner)); err == nil {
			return fmt.Errorf("id range %d is held by %s too", base, owner)
		}
	}
	return os.WriteFile(claim, []byte(dir), 0o600)
}

// idMappings are the spec's uid or gid mappings for a machine at base.
func idMappings(base uint32) []specs.LinuxIDMapping {
	return []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: idRangeSize}}
}

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
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree %s: %w", src, err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NODEV, Userns_fd: uint64(userns)}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
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

// hostID is the host id of id inside a machine at base (base 0: no user
// namespace).
func hostID(base uint32, id int) int {
	if base == 0 {
		return id
	}
	return int(base) + id
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

// usernsDir pins each machine's user namespace (a bind mount of its
// nsfs file), as /run/netns pins network namespaces.
const usernsDir = "/run/perch/userns"

// usernsPath is where machine id's user namespace is pinned.
func (d *Driver) usernsPath(id string) string {
	return filepath.Join(usernsDir, filepath.Base(d.rootBind(id)))
}

// pinNamespaces makes machine id's user namespace, and its network
// namespace (at netns; "" for none) owned by it, unless both are there.
// runc joins both. A network namespace owned by the machine's user
// namespace is what lets its root mount sysfs and bind ports below 1024
// as in any container, and what CRIU needs to checkpoint a machine in a
// user namespace: it refuses namespaces its user namespace does not own.
func (d *Driver) pinNamespaces(id string, base uint32, netns string) error {
	userns := d.usernsPath(id)
	okUser, _ := isMountPoint(userns)
	okNet := netns == ""
	if netns != "" {
		okNet, _ = isMountPoint(netns)
	}
	if okUser && okNet {
		return nil
	}
	if err := d.unpinNamespaces(id, netns); err != nil {
		return err
	}
	flags := uintptr(syscall.CLONE_NEWUSER)
	targets := map[string]string{"user": userns}
	if netns != "" {
		flags |= syscall.CLONE_NEWNET
		targets["net"] = netns
	}
	exe, err := os.Executable()
	if err != nil {
		exe = "/proc/self/exe"
	}
	cmd := exec.Command(exe)
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(base), Size: idRangeSize}}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: flags, UidMappings: m, GidMappings: m,
		// The machine's processes may set their supplementary groups.
		GidMappingsEnableSetgroups: true,
		Ptrace:                     true, Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("user namespace: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	for ns, dst := range targets {
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return fmt.Errorf("pin %s namespace: %w", ns, err)
		}
		if err := os.WriteFile(dst, nil, 0o600); err != nil {
			return fmt.Errorf("pin %s namespace: %w", ns, err)
		}
		src := fmt.Sprintf("/proc/%d/ns/%s", cmd.Process.Pid, ns)
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("pin %s namespace at %s: %w", ns, dst, err)
		}
	}
	return nil
}

// unpinNamespaces undoes pinNamespaces.
func (d *Driver) unpinNamespaces(id, netns string) error {
	for _, p := range []string{d.usernsPath(id), netns} {
		if p == "" {
			continue
		}
		if err := unmountRootfs(p); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("runc: %w", err)
		}
	}
	return nil
}

// netnsPath is the network namespace hostnet gives a machine on n, or ""
// for none (runc then makes an empty one).
func netnsPath(id string, n runtime.Net) string {
	if n.Bridge == "" {
		return ""
	}
	return hostnet.NetnsPath(id)
}

// reclaimIDRanges records again the id ranges of the machines in the
// state dir, which a host reboot took from /run, before any new machine
// can claim one of them.
func (d *Driver) reclaimIDRanges() {
	ids, err := machinedir.List(d.dir(""), fileRecord)
	if err != nil {
		return
	}
	for _, id := range ids {
		if r, err := d.readRecord(id); err == nil && r.UIDBase != 0 {
			if err := reclaimIDRange(r.UIDBase, d.dir(id)); err != nil {
				d.log.Warn("reclaim the machine's host id range", "id", id, "err", err)
			}
		}
	}
}
