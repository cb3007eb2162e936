package microvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// Stop's escalation after its timeout: SIGKILL to the app through the
// init, which then powers off; if the guest does not manage that within
// killGrace, the VM is killed. killWait bounds the wait for qemu to go
// after that, which only a stuck host makes slow.
const (
	killGrace = 5 * time.Second
	killWait  = 10 * time.Second
)

// Stop sends sig to the app through the init and waits up to timeout for
// the VM to power off; then it kills the app, and if need be the VM. The
// machine can be started again afterwards; its disk keeps what the app
// wrote.
func (d *Driver) Stop(ctx context.Context, id string, sig syscall.Signal, timeout time.Duration) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	st, err := d.State(ctx, id)
	if err != nil {
		return err
	}
	if st.Status == runtime.StatusExited || st.Status == runtime.StatusSuspended || !machinedir.Exists(d.path(id, fileShim)) {
		return nil
	}
	if err := d.command(id, "signal "+strconv.Itoa(int(sig))); err != nil {
		d.log.Debug("signal", "id", id, "err", err)
	}
	if d.waitExited(ctx, id, timeout) {
		return nil
	}
	d.log.Debug("machine did not stop in time; killing its app", "id", id, "signal", sig, "timeout", timeout)
	d.command(id, "signal "+strconv.Itoa(int(syscall.SIGKILL)))
	if d.waitExited(ctx, id, killGrace) {
		return nil
	}
	d.log.Warn("the guest did not power off after SIGKILL; killing the VM", "id", id)
	d.command(id, "kill")
	if !d.waitExited(ctx, id, killWait) {
		if ctx.Err() != nil {
			return fmt.Errorf("microvm: stop %s: %w", id, ctx.Err())
		}
		return fmt.Errorf("microvm: stop %s: the VM is still running %v after being killed", id, killWait)
	}
	return nil
}

var _ runtime.Signaler = (*Driver)(nil)

// Signal has the guest's init send the app sig.
func (d *Driver) Signal(ctx context.Context, id string, sig syscall.Signal) error {
	if err := checkID(id); err != nil {
		return err
	}
	return d.command(id, "signal "+strconv.Itoa(int(sig)))
}

// command writes one line to the shim's control fifo; it fails at once
// when no shim reads it.
func (d *Driver) command(id, line string) error {
	f, err := os.OpenFile(d.path(id, fileCtl), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("microvm: %s: shim control: %w", id, err)
	}
	defer f.Close()
	_, err = f.WriteString(line + "\n")
	return err
}

// waitExited polls until the machine has exited, for at most timeout.
func (d *Driver) waitExited(ctx context.Context, id string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := d.Wait(ctx, id)
	return err == nil && st.Status == runtime.StatusExited
}

// Destroy kills the machine's VM and removes its disk, tap and directory.
// Destroying an unknown machine removes whatever is left of it and is not
// an error.
func (d *Driver) Destroy(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := d.lock(id)
	defer unlock()
	return d.destroy(ctx, id)
}

func (d *Driver) destroy(ctx context.Context, id string) error {
	if err := d.killAll(ctx, id); err != nil {
		return fmt.Errorf("microvm: destroy %s: %w", id, err)
	}
	if err := hostnet.Detach(id); err != nil {
		return fmt.Errorf("microvm: destroy %s: %w", id, err)
	}
	if err := os.RemoveAll(d.dir(id)); err != nil {
		return fmt.Errorf("microvm: destroy %s: %w", id, err)
	}
	d.log.Debug("machine destroyed", "id", id)
	return nil
}

// killAll kills the VM and its shim and waits until both are gone, so
// that nothing writes into the machine's directory while it is removed.
func (d *Driver) killAll(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, killWait)
	defer cancel()
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		sh, shimUp := d.liveShim(id)
		qemu, _ := machinedir.ReadPid(d.path(id, fileQEMUPid))
		qemuUp := procAlive(qemu, d.dir(id))
		if !shimUp && !qemuUp {
			return nil
		}
		// The shim records the VM as killed; qemu also dies with its shim.
		d.command(id, "kill")
		if qemuUp {
			syscall.Kill(qemu, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			if shimUp {
				syscall.Kill(sh.Pid, syscall.SIGKILL)
			}
			return errors.Join(fmt.Errorf("shim %d or qemu %d still running after %v", sh.Pid, qemu, killWait), ctx.Err())
		case <-tick.C:
		}
	}
}
