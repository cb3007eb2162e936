package microvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/runtime/machinedir"
	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

// probeTimeout bounds the KVM probe: a guest that KVM can run reaches its
// init in well under a second; a /dev/kvm that cannot run it (a nested or
// paravirtual one) may hang instead of failing.
const probeTimeout = 10 * time.Second

// accelChoice is the probe's answer, remembered per host.
type accelChoice struct {
	Accel    string    `json:"accel"`
	Reason   string    `json:"reason,omitempty"` // why not KVM
	ProbedAt time.Time `json:"probed_at"`
}

// bootFiles returns the kernel and initramfs, made on first use.
func (d *Driver) bootFiles() (*kernel, string, error) {
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.kernel != nil {
		return d.kernel, d.initrd, nil
	}
	k, err := findKernel(d.cfg.KernelDir)
	if err != nil {
		return nil, "", err
	}
	initBin, err := d.initPath()
	if err != nil {
		return nil, "", err
	}
	initrd, err := buildInitramfs(d.cacheDir(), initBin, k.Modules)
	if err != nil {
		return nil, "", err
	}
	d.kernel, d.initrd = k, initrd
	return k, initrd, nil
}

// accelerator is KVM when it boots the guest, else TCG, decided once per
// host (the answer is kept in Config.AccelCache) and logged once per
// driver when the VMs run emulated.
func (d *Driver) accelerator(ctx context.Context, k *kernel, initrd string) (string, error) {
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.accel != nil {
		return d.accel.Accel, nil
	}
	qemu, err := exec.LookPath(d.qemuName())
	if err != nil {
		return "", fmt.Errorf("microvm: %w; install qemu-system-x86", err)
	}
	c, err := probeCached(ctx, d.cfg.AccelCache, qemu, k, initrd)
	if err != nil {
		return "", err
	}
	if c.Accel == accelTCG {
		d.log.Warn("microVMs run emulated (qemu TCG, no KVM): boots take seconds and guest code runs several times slower", "reason", c.Reason)
	} else {
		d.log.Info("microVMs run with KVM")
	}
	d.accel = &c
	return c.Accel, nil
}

// Accelerator is how this driver's VMs run, "kvm" or "tcg" (with why not
// KVM), once its first VM has started; "" before.
func (d *Driver) Accelerator() (accel, reason string) {
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.accel == nil {
		return "", ""
	}
	return d.accel.Accel, d.accel.Reason
}

// probeCached returns the remembered answer for this qemu, kernel and
// initramfs, probing (under a lock, so concurrent agents probe once) when
// there is none.
func probeCached(ctx context.Context, cacheFile, qemu string, k *kernel, initrd string) (accelChoice, error) {
	if c, ok := kvmUsable(); !ok {
		return c, nil
	}
	key, err := probeKey(qemu, k.Image, initrd)
	if err != nil {
		return accelChoice{}, err
	}
	if err := os.MkdirAll(filepath.Dir(cacheFile), 0o755); err != nil {
		return accelChoice{}, fmt.Errorf("microvm: accelerator cache: %w", err)
	}
	lock, err := os.OpenFile(cacheFile+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return accelChoice{}, fmt.Errorf("microvm: accelerator cache: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return accelChoice{}, fmt.Errorf("microvm: accelerator cache: %w", err)
	}
	known := map[string]accelChoice{}
	if b, err := os.ReadFile(cacheFile); err == nil {
		_ = json.Unmarshal(b, &known)
	}
	if c, ok := known[key]; ok {
		return c, nil
	}
	c := probeKVM(ctx, qemu, k, initrd)
	known[key] = c
	if err := machinedir.WriteJSON(cacheFile, known); err != nil {
		return accelChoice{}, fmt.Errorf("microvm: accelerator cache: %w", err)
	}
	return c, nil
}

// kvmUsable is the cheap part of the check: a /dev/kvm this process can
// open. Whether it runs the guest takes a probe.
func kvmUsable() (accelChoice, bool) {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return accelChoice{Accel: accelTCG, Reason: "cannot open /dev/kvm: " + err.Error(), ProbedAt: time.Now().UTC()}, false
	}
	f.Close()
	return accelChoice{}, true
}

// probeKVM boots the guest kernel with KVM and waits for the init's
// ProbeOK on the console.
func probeKVM(ctx context.Context, qemu string, k *kernel, initrd string) accelChoice {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, qemu, probeArgs(accelKVM, k, initrd)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	c := accelChoice{Accel: accelKVM, ProbedAt: time.Now().UTC()}
	if bytes.Contains(out.Bytes(), []byte(guestinit.ProbeOK)) {
		return c
	}
	c.Accel = accelTCG
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		c.Reason = fmt.Sprintf("/dev/kvm did not boot the guest kernel within %s", probeTimeout)
	default:
		c.Reason = fmt.Sprintf("/dev/kvm did not boot the guest kernel (qemu: %v): %s", err, lastLine(out.String()))
	}
	return c
}

func probeKey(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("microvm: %w", err)
		}
		fmt.Fprintln(h, p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
