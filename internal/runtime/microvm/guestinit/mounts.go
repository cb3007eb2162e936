package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/volume"
)

// mount is one filesystem to mount, relative to a root.
type mount struct {
	target, fstype, source string
	flags                  uintptr
	data                   string
}

// The init's own filesystems in the initramfs.
var early = []mount{
	{"/dev", "devtmpfs", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"/proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/run", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// The app's, inside the machine's disk: what runc gives a container. No
// /run: as under runc, the app's /run is the image's own, with what the
// image put there (Debian's postgres needs its /run/postgresql).
var appMounts = []mount{
	{"/proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/sys", "sysfs", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/dev", "devtmpfs", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"/dev/pts", "devpts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"/dev/shm", "tmpfs", "shm", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "mode=1777"},
}

// devLinks are the links in /dev that programs expect, as runc makes them.
var devLinks = map[string]string{
	"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
}

func mountAll(root string, ms []mount) error {
	for _, m := range ms {
		target := filepath.Join(root, m.target)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", target, err)
		}
		if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, target, err)
		}
	}
	return nil
}

func earlyMounts() error { return mountAll("/", early) }

// mountRoot waits for the machine's disk to appear (its driver probes
// asynchronously) and mounts it on newRoot.
func mountRoot(dev, fstype string, timeout time.Duration) error {
	if err := waitFor(dev, timeout); err != nil {
		return fmt.Errorf("the machine's disk: %w", err)
	}
	if err := os.MkdirAll(newRoot, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(dev, newRoot, fstype, unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount the machine's disk %s (%s) on %s: %w", dev, fstype, newRoot, err)
	}
	return nil
}

// setupRoot mounts the app's filesystems, names the machine, writes its
// /etc/hosts and /etc/resolv.conf and makes the working directory.
func setupRoot(root string, cfg Config, c cmdline) error {
	if err := mountAll(root, appMounts); err != nil {
		return err
	}
	if err := writeFiles(root, cfg.Files); err != nil { // files.go
		return err
	}
	if err := mountVolumes(root, cfg.Volumes, cfg.UID, cfg.GID, 20*time.Second); err != nil {
		return err
	}
	for name, target := range devLinks {
		if err := os.Symlink(target, filepath.Join(root, "dev", name)); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("/dev/%s: %w", name, err)
		}
	}
	hostname := cfg.Hostname
	if hostname == "" {
		hostname = "perch"
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := writeEtc(r, "hosts", hostsFile(hostname, c)); err != nil {
		return err
	}
	if len(c.dns) > 0 {
		if err := writeEtc(r, "resolv.conf", resolvConf(c.dns)); err != nil {
			return err
		}
	}
	if cfg.Cwd != "" && cfg.Cwd != "/" {
		// As runc: a working directory the image lacks is made.
		if err := r.MkdirAll(filepath.Clean(cfg.Cwd)[1:], 0o755); err != nil {
			return fmt.Errorf("working directory %s: %w", cfg.Cwd, err)
		}
	}
	return nil
}

// writeEtc replaces /etc/name on the machine's own disk, as the runc
// driver's bind mount replaces the image's file. The old entry goes first:
// it may be a link (to systemd's stub resolver, say) that leads nowhere
// here.
func writeEtc(r *os.Root, name, content string) error {
	if err := r.MkdirAll("etc", 0o755); err != nil {
		return fmt.Errorf("/etc: %w", err)
	}
	if err := r.Remove("etc/" + name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace /etc/%s: %w", name, err)
	}
	if err := r.WriteFile("etc/"+name, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write /etc/%s: %w", name, err)
	}
	return nil
}

// hostsFile names localhost, and the machine on each of its addresses.
func hostsFile(hostname string, c cmdline) string {
	hosts := "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	if !c.ip.Addr.IsValid() {
		return hosts + "127.0.1.1\t" + hostname + "\n"
	}
	hosts += c.ip.Addr.Addr().String() + "\t" + hostname + "\n"
	if c.ip6.IsValid() {
		hosts += c.ip6.Addr().String() + "\t" + hostname + "\n"
	}
	return hosts
}

// resolvConf lists the nameservers and nothing else.
func resolvConf(dns []netip.Addr) string {
	var s string
	for _, a := range dns {
		s += "nameserver " + a.String() + "\n"
	}
	return s
}

// unmountRoot undoes setupRoot and mountRoot so the disk is clean when the
// power goes; a mount still busy is detached, the journal covers the rest.
func unmountRoot() {
	for i := len(volumeTargets) - 1; i >= 0; i-- {
		if unix.Unmount(volumeTargets[i], 0) != nil {
			// Read-only at least: the volume outlives the machine.
			unix.Mount("", volumeTargets[i], "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		}
	}
	for i := len(appMounts) - 1; i >= 0; i-- {
		t := filepath.Join(newRoot, appMounts[i].target)
		if unix.Unmount(t, 0) != nil {
			unix.Unmount(t, unix.MNT_DETACH)
		}
	}
	if err := unix.Unmount(newRoot, 0); err != nil {
		// Read-only at least, so nothing is left half written.
		unix.Mount("", newRoot, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
	}
}

// volumeTargets are where the volumes are mounted, unmounted first at
// power off.
var volumeTargets []string

// mountVolumes mounts each volume disk, found by its serial (the order in
// which virtio-mmio disks appear is not the order they were given), at
// its path under root; a new one is given to the app's user uid:gid, or
// takes the owner of the image's directory there.
func mountVolumes(root string, vols []Volume, uid, gid uint32, timeout time.Duration) error {
	for _, v := range vols {
		dev, err := diskBySerial(v.Serial, timeout)
		if err != nil {
			return fmt.Errorf("volume for %s: %w", v.Path, err)
		}
		target := filepath.Join(root, v.Path)
		// The image's directory there, whose owner and mode a new
		// volume takes (volume.Claim, as runc machines' volumes do).
		var like *volume.Owner
		if fi, err := os.Stat(target); err == nil && fi.IsDir() {
			st := fi.Sys().(*syscall.Stat_t)
			like = &volume.Owner{UID: st.Uid, GID: st.Gid, Mode: fi.Mode() &^ fs.ModeDir}
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("volume for %s: %w", v.Path, err)
		}
		if err := unix.Mount(dev, target, "ext4", unix.MS_NOATIME|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("mount volume %s (ext4) on %s: %w", dev, v.Path, err)
		}
		volumeTargets = append(volumeTargets, target)
		if _, err := volume.Claim(target, like, uid, gid); err != nil {
			return fmt.Errorf("volume for %s: %w", v.Path, err)
		}
	}
	return nil
}

// diskBySerial is the /dev path of the virtio disk with serial.
func diskBySerial(serial string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		paths, _ := filepath.Glob("/sys/block/vd*/serial")
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == serial {
				dev := "/dev/" + filepath.Base(filepath.Dir(p))
				if err := waitFor(dev, timeout); err != nil {
					return "", err
				}
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no disk with serial %s appeared within %s", serial, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFor polls until path exists.
func waitFor(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s; is its driver in the kernel or the initramfs?", path, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
