package guestinit

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"
)

// The control channel is a virtio-serial port named PortName. Both sides
// send frames: one type byte, a big-endian uint32 payload length, the
// payload.
const PortName = "perch"

// Frame types the guest sends.
const (
	FrameStdout  = 'o' // the app's standard output, raw bytes
	FrameStderr  = 'e' // the app's standard error, raw bytes
	FrameStarted = 's' // the app runs; payload: its pid in the guest, decimal
	FrameExit    = 'x' // the app is gone; payload: its exit code, decimal (128+n for signal n), then " oom" if the guest's OOM killer ended it
)

// Frame types the host sends.
const (
	FrameConfig = 'C' // the first frame: Config as JSON
	FrameSignal = 'K' // send the app a signal; payload: its number, decimal
	FrameBye    = 'B' // the host has recorded the exit; the guest may power off
)

// maxFrame bounds a payload so a corrupt header cannot make either side
// allocate without limit.
const maxFrame = 1 << 20

// Exit codes of a run that never reached the app, as Docker's.
const (
	ExitSetupFailed   = 125 // the guest could not be prepared (disk, network, config)
	ExitNotExecutable = 126
	ExitNotFound      = 127
)

// ProbeOK is what the init prints on the console when booted with
// perch.probe=1: the host's check that an accelerator boots the kernel.
const ProbeOK = "perch-init: probe ok"

// Config is what the host tells the init to run. The network comes from
// the kernel command line instead (ip=), as for any Linux guest.
type Config struct {
	Args     []string `json:"args"`
	Env      []string `json:"env"` // final: PATH and HOME already defaulted
	Cwd      string   `json:"cwd"`
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Groups   []uint32 `json:"groups,omitempty"`
	Hostname string   `json:"hostname"`
	// Volumes are disks the host attached for the app (its volumes),
	// each found by its virtio serial and mounted (ext4) at its path.
	Volumes []Volume `json:"volumes,omitempty"`
	// Files are the machine's config.files (files.go).
	Files []File `json:"files,omitempty"`
}

// Volume is one volume disk: Serial is its virtio-blk serial, Path where
// the app sees it.
type Volume struct {
	Serial string `json:"serial"`
	Path   string `json:"path"`
}

// VolumeSerial is the serial of the i-th volume disk.
func VolumeSerial(i int) string { return fmt.Sprintf("perch-vol%d", i) }

// Writer sends frames; safe for concurrent use, each frame written whole.
type Writer struct {
	mu sync.Mutex
	w  io.Writer
}

// NewWriter returns a Writer over w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Send writes one frame.
func (w *Writer) Send(typ byte, payload []byte) error {
	for len(payload) > maxFrame {
		if err := w.Send(typ, payload[:maxFrame]); err != nil {
			return err
		}
		payload = payload[maxFrame:]
	}
	buf := make([]byte, 5+len(payload))
	buf[0] = typ
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.w.Write(buf)
	return err
}

// readFirstFrame reads the host's first frame (the machine's config). A
// virtio port reads as end-of-file, without blocking, until the host side
// has said it is connected (the kernel's port_fops_read), and that message
// can come after the guest opened the port: on a loaded host the config
// read failed so, and the machine powered off. Such a read, with nothing
// read, is tried again until timeout.
func readFirstFrame(r io.Reader, timeout time.Duration) (typ byte, payload []byte, err error) {
	deadline := time.Now().Add(timeout)
	for {
		typ, payload, err = ReadFrame(r)
		if err != io.EOF || time.Now().After(deadline) {
			return typ, payload, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ReadFrame reads one frame from r.
func ReadFrame(r io.Reader) (typ byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("guestinit: frame of %d bytes (type %q) is over the %d limit", n, hdr[0], maxFrame)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("guestinit: short frame: %w", err)
	}
	return hdr[0], payload, nil
}
