package microvm

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/runtime/microvm/guestinit"
)

// Accelerators.
const (
	accelKVM = "kvm"
	accelTCG = "tcg"
)

// bootArgs is the guest kernel's command line apart from the network:
// the serial console, quiet (the console keeps warnings and perch-init's
// lines), reboot at once on a panic (-no-reboot turns that into qemu
// exiting), and no probing for hardware the microvm machine has not.
var bootArgs = []string{
	"console=ttyS0", "quiet", "panic=-1", "rdinit=" + guestInitPath,
	"i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
	"8250.nr_uarts=1", "pci=off", "no_timer_check", "random.trust_cpu=on",
}

// vmConfig is what the shim runs: written by Start into vm.json.
type vmConfig struct {
	QEMU  string           `json:"qemu"`
	Args  []string         `json:"args"`
	Guest guestinit.Config `json:"guest"`
	// Resume says qemu restores the guest from a snapshot (-incoming):
	// the guest's init runs already, so the shim sends no config and
	// reports the app running once qemu runs the guest again.
	Resume bool `json:"resume,omitempty"`
}

// accelArgs selects the machine, the accelerator and a CPU model that it
// can run: microvm with the serial console and the real-time clock the
// kernel reads the date from. With KVM the legacy timer and interrupt
// controller go too (kvmclock times the guest); emulated, the kernel
// needs the PIT to calibrate its clock. A kernel without ACPI finds the
// virtio-mmio devices on its command line, which qemu then writes.
func accelArgs(accel string, k *kernel) []string {
	machine := "microvm,x-option-roms=off,isa-serial=on,rtc=on"
	if k.NoACPI {
		machine += ",acpi=off"
	}
	if accel == accelKVM {
		return []string{"-M", machine + ",pit=off,pic=off", "-accel", "kvm", "-cpu", "host"}
	}
	return []string{"-M", machine, "-accel", "tcg", "-cpu", "max"}
}

// machineArgs is qemu's command line for machine r, booting kernel with
// initrd, its disk and control port, and its tap when it has a network.
func machineArgs(r record, dir, accel string, k *kernel, initrd, tap string) []string {
	cmdline := append([]string{}, bootArgs...)
	if khz := hostTSCkHz(); accel == accelTCG && khz > 0 {
		cmdline = append(cmdline, "tsc=reliable", "tsc_early_khz="+strconv.FormatUint(khz, 10))
	}
	spec := r.Spec
	cpus, mem := spec.CPUs, spec.MemoryMB
	if cpus <= 0 {
		cpus = 1
	}
	if mem <= 0 {
		mem = 256
	}
	args := []string{
		"-name", "perch-" + spec.ID,
	}
	args = append(args, accelArgs(accel, k)...)
	args = append(args,
		"-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem)+"M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=con,path="+qemuOpt(dir+"/"+fileConsole)+",append=on",
		"-serial", "chardev:con",
		"-kernel", qemuOpt(k.Image), "-initrd", qemuOpt(initrd),
		"-drive", "id=root,if=none,format=qcow2,file="+qemuOpt(dir+"/"+fileDisk),
		"-device", "virtio-blk-device,drive=root",
		"-qmp", "unix:"+qemuOpt(dir+"/"+fileQMP)+",server=on,wait=off",
		"-chardev", "stdio,id=ctl,signal=off",
		"-device", "virtio-serial-device,max_ports=2",
		"-device", "virtserialport,chardev=ctl,name="+guestinit.PortName,
	)
	// Volumes: each ext4 image a raw virtio disk, found by the guest's
	// init by its serial. (Not cache=none: the state dir may be on tmpfs,
	// which has no O_DIRECT; the guest's flushes reach the disk anyway.)
	for i, m := range spec.Mounts {
		id := "vol" + strconv.Itoa(i)
		args = append(args,
			"-drive", "id="+id+",if=none,format=raw,file="+qemuOpt(m.Image),
			"-device", "virtio-blk-device,drive="+id+",serial="+guestinit.VolumeSerial(i))
	}
	if tap != "" {
		hostname := spec.Hostname
		if hostname == "" {
			hostname = spec.ID
		}
		cmdline = append(cmdline, guestinit.IPParam(spec.Net.Addr, spec.Net.Gateway, hostname, "eth0"))
		cmdline = append(cmdline, guestinit.NetParams(spec.Net.Addr6, spec.Net.DNS)...)
		args = append(args,
			"-netdev", "tap,id=net0,ifname="+tap+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev=net0,mac="+macFor(spec.Net.Addr.Addr()))
	}
	return append(args, "-append", strings.Join(cmdline, " "))
}

// probeArgs boots the kernel and init only, to see whether accel can.
func probeArgs(accel string, k *kernel, initrd string) []string {
	return append(accelArgs(accel, k),
		"-smp", "1", "-m", "128M", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-kernel", qemuOpt(k.Image), "-initrd", qemuOpt(initrd),
		"-append", strings.Join(append(append([]string{}, bootArgs...), "perch.probe=1"), " "))
}

// macFor gives a machine a MAC address of its own on the bridge, derived
// from its address (locally administered, so it clashes with no vendor's).
// qemu would give every VM the same one.
func macFor(addr netip.Addr) string {
	b := addr.As4()
	return fmt.Sprintf("02:70:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// qemuOpt escapes a value inside qemu's comma-separated options.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
