// Package runtime defines the driver interface through which an agent runs
// machines, whatever isolates them: a runc sandbox (runtime/runc) or a
// microVM (runtime/microvm). The agent imports it; drivers implement it. A driver keeps
// machines running when the agent process exits, so an agent restart never
// stops or duplicates a machine.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
)

// ErrNotFound is returned for a machine the driver does not know.
var ErrNotFound = errors.New("machine not found in runtime")

// Process is what runs inside the machine, already merged from the image
// config and the machine config.
type Process struct {
	Args []string
	Env  []string // KEY=value
	Cwd  string
	User string // as in the image config: "uid[:gid]" or a name in /etc/passwd
}

// Net is the machine's network attachment: an address on a host bridge.
// The zero values of Addr6 and DNS leave the machine IPv4 only, with the
// image's own /etc/resolv.conf.
type Net struct {
	Bridge  string       // host bridge to attach to
	Addr    netip.Prefix // the machine's address and prefix length
	Gateway netip.Addr   // the bridge's address
	// Addr6 is the machine's private IPv6 address (6PN) with its host's
	// prefix, on-link on the bridge: mesh.MachineAddr in the host's /64.
	Addr6 netip.Prefix
	// DNS are the nameservers the machine's /etc/resolv.conf lists, in
	// order; empty keeps the image's file.
	DNS []netip.Addr
}

// Spec is a machine as a driver needs it.
type Spec struct {
	ID     string
	Rootfs string // the image's unpacked root filesystem; read-only to the driver, shared between machines
	// Layers, when set, stand for Rootfs: the image's layers as overlayfs
	// lower directories, topmost first, shared between machines and
	// images (whiteouts as 0:0 devices, opaque directories by xattr).
	Layers   []string
	Process  Process
	Hostname string
	Net      Net
	CPUs     int
	MemoryMB int
	// Suspendable asks for a machine that can be suspended (a service
	// autostops by "suspend"). runc suspends any machine, in its user
	// namespace (docs/security.md).
	Suspendable bool
	// Files are written into the machine's root filesystem before it
	// starts (Fly's config.files), owned by root.
	Files []File
	// Mounts are volumes (package volume): runc bind-mounts each Source
	// (a directory on the host, the volume mounted there by the agent) at
	// Destination; a microVM gets each Image as a virtio disk its init
	// mounts at Destination.
	Mounts []Mount
}

// Mount is one volume of Spec.Mounts.
type Mount struct {
	Source      string // host directory (runc)
	Image       string // ext4 image file (microvm)
	Destination string // absolute path inside the machine
}

// File is one file of Spec.Files: Path is absolute inside the machine,
// Mode its permission bits.
type File struct {
	Path string
	Data []byte
	Mode os.FileMode
}

// Status of a machine in the runtime.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusExited  = "exited"
	// StatusSuspended is a machine whose process was frozen to a snapshot
	// by Suspender.Suspend; its next Start resumes it from there.
	StatusSuspended = "suspended"
)

// State is what the driver knows of a machine.
type State struct {
	Status   string
	Pid      int
	ExitCode int
	// OOMKilled says the kernel killed the process for going over the
	// machine's memory (ExitCode is then 137, SIGKILL's).
	OOMKilled bool
	StartedAt time.Time
	ExitedAt  time.Time
}

// LogFile is one output stream of a machine, as a file the driver appends to.
type LogFile struct {
	Stream string // "stdout" or "stderr"
	Path   string
}

// Driver runs machines.
type Driver interface {
	// Name is the runtime's name as in config.guest.runtime.
	Name() string
	// Create prepares the machine (root filesystem copy, network, bundle)
	// without starting it. Creating an existing machine replaces it.
	Create(ctx context.Context, spec Spec) error
	// Start starts the machine's process, detached from the caller.
	Start(ctx context.Context, id string) error
	// Stop sends sig, waits up to timeout for the process to exit, then
	// kills it.
	Stop(ctx context.Context, id string, sig syscall.Signal, timeout time.Duration) error
	// State reports the machine's state; ErrNotFound if unknown.
	State(ctx context.Context, id string) (State, error)
	// Wait blocks until the machine's process has exited or ctx is done.
	Wait(ctx context.Context, id string) (State, error)
	// Destroy stops the machine if needed and removes everything the driver
	// made for it. Destroying an unknown machine is not an error.
	Destroy(ctx context.Context, id string) error
	// Logs lists the files the machine's output is appended to.
	Logs(id string) []LogFile
	// List returns the ids of every machine the driver knows.
	List(ctx context.Context) ([]string, error)
}

// ErrCannotSuspend is returned (wrapped, with the reason) by Suspend when
// the machine cannot be snapshotted; the machine is left as it was, and
// the caller stops it instead.
var ErrCannotSuspend = errors.New("machine cannot be suspended")

// ErrResumeFailed is returned (wrapped, with the reason) by Start when a
// machine's snapshot could not be restored. The driver has discarded the
// snapshot, so the next Start boots the machine afresh.
var ErrResumeFailed = errors.New("machine could not be resumed from its snapshot")

// Suspender is implemented by drivers that can suspend a running machine:
// freeze its memory and process state to a snapshot in the machine's
// directory and stop it. The next Start resumes from the snapshot
// instead of booting, and State reports StatusSuspended until then.
type Suspender interface {
	// Suspend snapshots the running machine and stops it. It returns an
	// error wrapping ErrCannotSuspend when the machine (or this host)
	// cannot be snapshotted; the machine then keeps running.
	Suspend(ctx context.Context, id string) error
	// DiscardSnapshot removes the machine's snapshot, if any, so that the
	// next Start boots it afresh; the machine stays stopped.
	DiscardSnapshot(ctx context.Context, id string) error
}

// DiskUser is implemented by drivers that can tell how much of the host's
// disk a machine holds of its own: its writable root filesystem (runc's
// overlay upper layer or copy, a microVM's qcow2 overlay) and its
// snapshot if suspended, in bytes allocated; the image's shared layers
// and cached disks are not counted. Metering prices it while the machine
// is stopped or suspended.
type DiskUser interface {
	DiskUsage(ctx context.Context, id string) (int64, error)
}

// Signaler is implemented by drivers that can send a running machine's
// process a signal without stopping it (Fly's POST .../signal).
type Signaler interface {
	Signal(ctx context.Context, id string, sig syscall.Signal) error
}

// Lowers is the spec's root filesystem as overlayfs lower directories,
// topmost first: its Layers, or Rootfs alone.
func (s Spec) Lowers() []string {
	if len(s.Layers) > 0 {
		return s.Layers
	}
	return []string{s.Rootfs}
}

// CheckLowers says whether every lower directory of the spec is there.
func (s Spec) CheckLowers() error {
	for _, l := range s.Lowers() {
		if fi, err := os.Stat(l); err != nil || !fi.IsDir() {
			return fmt.Errorf("rootfs %q is not a directory", l)
		}
	}
	return nil
}
