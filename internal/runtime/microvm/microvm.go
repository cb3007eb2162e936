// Package microvm is the runtime driver that boots each machine as a
// small virtual machine: `qemu-system-x86_64 -M microvm` with the image's
// root filesystem as an ext4 disk (virtio-blk), a tap device on the host
// bridge (virtio-net), and a guest kernel whose init is perch-init
// (package guestinit) in an initramfs. The host talks to the init over a
// virtio-serial port: what to run, the app's output, signals, the exit
// code. Each VM's qemu runs under a shim (ShimMain, the perch binary
// re-executed) in its own session, so machines outlive the agent. KVM is
// used when it boots the guest kernel (probed once per host), otherwise
// qemu emulates (TCG). The agent and cmd/perch import it.
//
// State layout under Config.StateDir:
//
//	machines/<id>/             one per machine (files named below)
//	cache/                     unless Config.CacheDir is elsewhere:
//	  disks/<key>.ext4         the image rootfs as an ext4 disk, one per rootfs
//	  initramfs-<key>.cpio     the init, its libraries and the kernel modules
package microvm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

var _ runtime.Driver = (*Driver)(nil)

// DefaultKernelDir is where scripts/deps.sh unpacks Debian's cloud kernel:
// vmlinuz, and its modules under modules/.
const DefaultKernelDir = "/usr/local/lib/perch/kernel"

// DefaultAccelCache is where the KVM probe's answer is kept: under /run,
// so a reboot (maybe into another host kernel) probes again.
const DefaultAccelCache = "/run/perch/microvm-accel.json"

// Files in a machine's directory.
const (
	fileRecord  = "machine.json" // the runtime.Spec, resolved user, disk
	fileDisk    = "disk.qcow2"   // copy-on-write over the image's cached disk
	fileVM      = "vm.json"      // what the shim runs: qemu's arguments, the guest config
	fileShim    = "shim.json"    // the running shim's pid and start time
	fileQEMUPid = "qemu.pid"     // written by the shim once qemu runs
	fileRunning = "running"      // written by the shim when the guest reports the app started
	fileExit    = "exit.json"    // written by the shim when qemu has exited
	fileCtl     = "ctl"          // FIFO: commands to the shim ("signal N", "kill")
	fileStdout  = "stdout.log"
	fileStderr  = "stderr.log"
	fileConsole = "console.log" // the guest's serial console and qemu's own messages
)

// Config configures a Driver.
type Config struct {
	// StateDir holds the driver's state; one per agent.
	StateDir string
	// CacheDir holds the image disks and initramfs files, which drivers
	// may share; "" is StateDir/cache.
	CacheDir string
	// ShimCommand runs the shim, e.g. {"/usr/local/bin/perch", "microvm-shim"};
	// the driver appends the shim's flags. Only Start needs it.
	ShimCommand []string
	// KernelDir holds the guest kernel as vmlinuz and, unless every driver
	// the guest needs is built in, its modules under modules/ (a
	// lib/modules/<version> tree with modules.dep). "" is DefaultKernelDir.
	KernelDir string
	// Init is the guest's init, copied into the initramfs as /perch-init.
	// "" is a perch-init beside the running executable if there is one
	// (the slim build of guestinit/perchinit: a few MB, where the whole
	// perch binary costs every guest ~30 MB of memory and some boot time),
	// else the running executable, perch itself.
	Init string
	// QEMU is qemu-system-x86_64; "" looks it up in PATH.
	QEMU string
	// AccelCache is the file remembering whether KVM boots the guest;
	// "" is DefaultAccelCache.
	AccelCache string
	// Log receives the driver's messages; nil discards them.
	Log *slog.Logger
}

// Driver runs machines as microVMs. Its methods are safe for concurrent
// use.
type Driver struct {
	cfg      Config
	stateDir string
	log      *slog.Logger
	initWarn sync.Once // the whole perch binary as the guest init, said once

	setupMu sync.Mutex // guards the fields below, found on first use
	kernel  *kernel
	initrd  string
	accel   *accelChoice

	locks machinedir.Locks
}

// New returns a driver over cfg.StateDir, seeing the machines an earlier
// driver (an earlier agent process) left running there. It does not look
// for qemu or the kernel yet: Check does, and so does every Create.
func New(cfg Config) (*Driver, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("microvm: Config.StateDir is required")
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("microvm: state dir: %w", err)
	}
	if cfg.KernelDir == "" {
		cfg.KernelDir = DefaultKernelDir
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(stateDir, "cache")
	}
	if cfg.AccelCache == "" {
		cfg.AccelCache = DefaultAccelCache
	}
	cfg.ShimCommand = slices.Clone(cfg.ShimCommand)
	d := &Driver{cfg: cfg, stateDir: stateDir, log: cfg.Log}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	for _, dir := range []string{filepath.Join(stateDir, "machines"), filepath.Join(cfg.CacheDir, "disks")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("microvm: state dir: %w", err)
		}
	}
	return d, nil
}

// Name is "microvm".
func (d *Driver) Name() string { return "microvm" }

// Check reports whether this host can boot microVMs: qemu, qemu-img,
// mkfs.ext4, the kernel and the init are all there. It says what is
// missing and how to get it.
func (d *Driver) Check() error {
	if err := d.checkTools(); err != nil {
		return err
	}
	if _, err := findKernel(d.cfg.KernelDir); err != nil {
		return err
	}
	if _, err := d.initPath(); err != nil {
		return err
	}
	return nil
}

func (d *Driver) checkTools() error {
	for _, tool := range []struct{ name, pkg string }{
		{d.qemuName(), "qemu-system-x86"}, {"qemu-img", "qemu-utils"}, {"mkfs.ext4", "e2fsprogs"},
	} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("microvm: %s not found; install it (apt-get install %s) or run scripts/deps.sh", tool.name, tool.pkg)
		}
	}
	return nil
}

func (d *Driver) qemuName() string {
	if d.cfg.QEMU != "" {
		return d.cfg.QEMU
	}
	return "qemu-system-x86_64"
}

func (d *Driver) initPath() (string, error) {
	p := d.cfg.Init
	if p == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("microvm: find the perch executable to use as the guest init: %w", err)
		}
		p = exe
		if slim := filepath.Join(filepath.Dir(exe), "perch-init"); machinedir.Exists(slim) {
			p = slim
		} else {
			d.initWarn.Do(func() {
				var mb int64
				if fi, err := os.Stat(exe); err == nil {
					mb = fi.Size() >> 20
				}
				d.log.Warn("microVM guest init is the whole perch binary: it boots slower and a guest with little memory may not boot at all; build perch-init beside perch (make build)",
					"init", exe, "size_mb", mb, "want", slim)
			})
		}
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("microvm: guest init: %w", err)
	}
	return p, nil
}

func (d *Driver) dir(id string) string { return filepath.Join(d.stateDir, "machines", id) }

func (d *Driver) path(id, name string) string { return filepath.Join(d.dir(id), name) }

func (d *Driver) cacheDir() string { return d.cfg.CacheDir }

// lock serialises the changes made to one machine.
func (d *Driver) lock(id string) func() {
	return d.locks.Lock(id)
}

// checkID rejects ids that cannot name a directory and a tap device.
func checkID(id string) error {
	if err := hostnet.CheckID(id); err != nil {
		return fmt.Errorf("microvm: %w", err)
	}
	return nil
}

// Logs lists the machine's stdout and stderr files, and its console: the
// guest kernel's warnings, perch-init's own lines and qemu's messages.
func (d *Driver) Logs(id string) []runtime.LogFile {
	return []runtime.LogFile{
		{Stream: "stdout", Path: d.path(id, fileStdout)},
		{Stream: "stderr", Path: d.path(id, fileStderr)},
		{Stream: "console", Path: d.path(id, fileConsole)},
	}
}
