package runc

import (
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultCaps are Docker's default set, so images written for Docker (an
// entrypoint that chowns its data dir and drops to a user with gosu) run
// unchanged. Nothing in it reaches past the sandbox's namespaces.
var defaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// ambientCaps are kept by a process running as a non-root user: binding
// ports below 1024 only, as `runc spec` grants.
var ambientCaps = []string{"CAP_NET_BIND_SERVICE"}

// ociSpec is the bundle's config.json for spec, with the root filesystem at
// rootfs and the network namespace at netns ("" for a new, empty one).
//
// With base (not 0), the machine has a user namespace of its own mapping
// its ids 0..65535 to host ids base..., pinned at userns (userns.go).
func ociSpec(spec runtime.Spec, rootfs, netns string, u imageuser.User, cgroupParent string, base uint32, userns string) *specs.Spec {
	cwd := spec.Process.Cwd
	if cwd == "" {
		cwd = "/"
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = spec.ID
	}
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: u.UID, GID: u.GID, AdditionalGids: u.Extra},
			Args: spec.Process.Args,
			Env:  processEnv(spec.Process.Env, u.Home),
			Cwd:  cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:    defaultCaps,
				Effective:   defaultCaps,
				Permitted:   defaultCaps,
				Inheritable: ambientCaps,
				Ambient:     ambientCaps,
			},
			Rlimits: nofile(),
			// No process gains privileges by exec (setuid binaries, file
			// capabilities): what the machine starts with is its most.
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfs},
		Hostname: hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			Resources:   resources(spec),
			CgroupsPath: "/" + cgroupParent + "/" + spec.ID,
			Seccomp:     seccompProfile(defaultCaps), // seccomp.go
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: netns},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
				"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
				"/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
	if base != 0 {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: userns})
		s.Linux.UIDMappings, s.Linux.GIDMappings = idMappings(base), idMappings(base)
	}
	return s
}

// processEnv adds PATH and HOME when the image and machine set none, as
// Docker does; runc looks the program up in this PATH.
func processEnv(env []string, home string) []string {
	out := append([]string(nil), env...)
	has := func(key string) bool {
		for _, kv := range env {
			if strings.HasPrefix(kv, key+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		out = append(out, defaultPath)
	}
	if !has("HOME") {
		out = append(out, "HOME="+home)
	}
	return out
}

// nofile lets the machine open as many files as the agent may. Raising the
// hard limit beyond the agent's would need CAP_SYS_RESOURCE, which some
// hosts (and sandboxes) withhold.
func nofile() []specs.POSIXRlimit {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Max == unix.RLIM_INFINITY {
		return nil
	}
	return []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: lim.Max, Soft: lim.Max}}
}

// DefaultMemoryMB is the memory of a machine whose spec names none: the
// smallest size preset's (shared-cpu-1x, scheduler.DefaultMemoryMB). A
// machine is never without a limit.
const DefaultMemoryMB = 256

// PidsLimit is how many processes and threads a machine may have at once:
// a fork bomb stops there, not at the host's limit.
const PidsLimit = 1024

func resources(spec runtime.Spec) *specs.LinuxResources {
	pids := int64(PidsLimit)
	r := &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		Pids:    &specs.LinuxPids{Limit: &pids},
	}
	mb := spec.MemoryMB
	if mb <= 0 {
		mb = DefaultMemoryMB
	}
	limit := int64(mb) << 20
	// Swap is memory+swap: equal to the limit means no swap, so the
	// limit is what the machine really gets.
	r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	if spec.CPUs > 0 {
		period := uint64(100000)
		quota := int64(spec.CPUs) * int64(period)
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	return r
}

func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}
