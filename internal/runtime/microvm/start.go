package microvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

// bootTimeout bounds how long Start waits for the guest to start the app
// when ctx has no earlier deadline: an emulated boot on a loaded host
// takes seconds, never this long.
const bootTimeout = 2 * time.Minute

// Start boots the machine's VM under a new shim and returns once the init
// has started the app (or the VM has already stopped; State then has the
// exit code).
func (d *Driver) Start(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	r, err := d.readRecord(id)
	if err != nil {
		return err
	}
	if sh, ok := d.liveShim(id); ok {
		if !machinedir.Exists(d.path(id, fileExit)) {
			return d.waitStarted(ctx, id, sh.Pid, nil) // already started or booting
		}
		// The last run's shim has recorded its exit and is on its way out.
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			return fmt.Errorf("microvm: start %s: %w", id, err)
		}
	}
	if len(d.cfg.ShimCommand) == 0 {
		return fmt.Errorf("microvm: start %s: no shim command configured (the perch binary and \"microvm-shim\")", id)
	}
	k, initrd, err := d.bootFiles()
	if err != nil {
		return fmt.Errorf("microvm: start %s: %w", id, err)
	}
	accel, err := d.accelerator(ctx, k, initrd)
	if err != nil {
		return fmt.Errorf("microvm: start %s: %w", id, err)
	}
	qemu, err := exec.LookPath(d.qemuName())
	if err != nil {
		return fmt.Errorf("microvm: start %s: %w; install qemu-system-x86", id, err)
	}
	// After a host reboot the tap is gone; make it again.
	if r.Spec.Net.Bridge != "" {
		if r.Tap, err = hostnet.AttachTap(id, r.Spec.Net); err != nil {
			return fmt.Errorf("microvm: start %s: %w", id, err)
		}
	}
	vm := vmConfig{
		QEMU:  qemu,
		Args:  machineArgs(r, d.dir(id), accel, k, initrd, r.Tap),
		Guest: guestConfig(r),
	}
	if d.hasSnapshot(id) {
		vm.Resume = true
		vm.Args = append(vm.Args, "-incoming", "exec:cat "+shellQuote(d.path(id, fileSnapshot)))
	}
	if err := machinedir.WriteJSON(d.path(id, fileVM), vm); err != nil {
		return fmt.Errorf("microvm: start %s: %w", id, err)
	}
	for _, name := range []string{fileExit, fileRunning, fileQEMUPid, fileQMP} {
		if err := os.Remove(d.path(id, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("microvm: start %s: %w", id, err)
		}
	}
	if err := unix.Mkfifo(d.path(id, fileCtl), 0o600); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("microvm: start %s: control fifo: %w", id, err)
	}

	argv := append(d.cfg.ShimCommand[0:len(d.cfg.ShimCommand):len(d.cfg.ShimCommand)], "--dir", d.dir(id))
	sh, exited, err := machinedir.StartShim(argv, d.path(id, fileShim))
	if err != nil {
		return fmt.Errorf("microvm: start %s: %w", id, err)
	}
	d.log.Debug("machine booting", "id", id, "shim", sh.Pid, "accel", accel, "resume", vm.Resume)
	if err := d.waitStarted(ctx, id, sh.Pid, exited); err != nil || !vm.Resume {
		return err
	}
	if machinedir.Exists(d.path(id, fileExit)) && !machinedir.Exists(d.path(id, fileRunning)) {
		// qemu could not load the snapshot: it cannot be used, now or later.
		if err := d.waitShimGone(ctx, id, sh.Pid); err != nil {
			d.log.Warn("shim of a failed resume still running", "id", id, "err", err)
		}
		if err := d.removeSnapshot(id); err != nil {
			return err
		}
		return fmt.Errorf("microvm: start %s: %w: qemu -incoming failed; see %s", id, runtime.ErrResumeFailed, d.path(id, fileConsole))
	}
	return d.removeSnapshot(id)
}

// guestConfig is what the init runs, with PATH and HOME defaulted as
// Docker (and the runc driver) does.
func guestConfig(r record) guestinit.Config {
	env := dedupEnv(r.Spec.Process.Env)
	has := func(key string) bool {
		for _, kv := range env {
			if strings.HasPrefix(kv, key+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if !has("HOME") {
		env = append(env, "HOME="+r.User.Home)
	}
	hostname := r.Spec.Hostname
	if hostname == "" {
		hostname = r.Spec.ID
	}
	cfg := guestinit.Config{
		Args: r.Spec.Process.Args, Env: env, Cwd: r.Spec.Process.Cwd,
		UID: r.User.UID, GID: r.User.GID, Groups: r.User.Extra, Hostname: hostname,
	}
	for i, m := range r.Spec.Mounts { // qemu.go attaches them in this order
		cfg.Volumes = append(cfg.Volumes, guestinit.Volume{Serial: guestinit.VolumeSerial(i), Path: m.Destination})
	}
	for _, f := range r.Spec.Files {
		cfg.Files = append(cfg.Files, guestinit.File{Path: f.Path, Data: f.Data, Mode: uint32(f.Mode.Perm())})
	}
	return cfg
}

// dedupEnv keeps one entry per key, the last one given, where the first
// stood: what runc makes of a list with repeated keys. A process would
// otherwise see the first (Go's os.Getenv does).
func dedupEnv(env []string) []string {
	last := map[string]string{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		last[k] = kv
	}
	out := make([]string, 0, len(last))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if v, ok := last[k]; ok {
			out = append(out, v)
			delete(last, k)
		}
	}
	return out
}

// waitStarted waits until the guest has started the app, or the run is
// over.
func (d *Driver) waitStarted(ctx context.Context, id string, shimPid int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if machinedir.Exists(d.path(id, fileRunning)) || machinedir.Exists(d.path(id, fileExit)) {
			return nil
		}
		if machinedir.Gone(exited, func() bool { return d.shimAlive(id, shimPid) }) {
			if machinedir.Exists(d.path(id, fileExit)) {
				return nil
			}
			return fmt.Errorf("microvm: start %s: the shim exited without recording an exit code; see %s", id, d.path(id, fileStderr))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("microvm: start %s: waiting for the guest to start the app: %w; its console log is %s", id, ctx.Err(), d.path(id, fileConsole))
		case <-tick.C:
		}
	}
}

// waitShimGone waits for a shim that has finished its work to exit.
func (d *Driver) waitShimGone(ctx context.Context, id string, pid int) error {
	return machinedir.WaitGone(ctx, pid, func() bool { return d.shimAlive(id, pid) }, killWait)
}
