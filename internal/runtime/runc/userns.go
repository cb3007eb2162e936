package runc

import (
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

// hostID is the host id of id inside a machine at base (base 0: no user
// namespace).
func hostID(base uint32, id int) int {
	if base == 0 {
		return id
	}
	return int(base) + id
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
		return d.pinRuncNetns(id, netns) // suspendns.go
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
	return d.pinRuncNetns(id, netns)
}

// unpinNamespaces undoes pinNamespaces.
func (d *Driver) unpinNamespaces(id, netns string) error {
	for _, p := range []string{d.runcNetnsPath(id), d.usernsPath(id), netns} {
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
