// Package runc is the runtime driver that runs machines as runc containers:
// an OCI bundle per machine over a writable overlay of the image's root
// filesystem, in the network namespace hostnet gives it, with cgroup limits.
// Each machine's runc runs under a small shim process (ShimMain, the perch
// binary re-executed) in its own session, so machines outlive the agent and
// their exit codes are recorded in the machine's directory. The agent and
// cmd/perch import it.
//
// State layout under Config.StateDir:
//
//	runc/                  runc --root, private to this driver
//	machines/<id>/         one per machine (files named below)
package runc

import (
	"cmp"
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

// Files in a machine's directory.
const (
	fileConfig  = "config.json"  // the OCI bundle's spec
	fileRecord  = "machine.json" // the runtime.Spec and how the rootfs was made
	fileShim    = "shim.json"    // the running shim's pid and start time
	fileExit    = "exit.json"    // written by the shim when runc returns
	filePid     = "pid"          // the container's pid, written by runc once it runs
	fileStdout  = "stdout.log"
	fileStderr  = "stderr.log"
	fileHosts   = "hosts"       // the machine's /etc/hosts, bind-mounted
	fileResolv  = "resolv.conf" // its /etc/resolv.conf when Net.DNS is set
	dirRootfs   = "rootfs"      // the bundle's root: overlay mount or a copy
	dirUpper    = "upper"
	dirWork     = "work"
	dirLowers   = "lowers" // the image's layers mounted idmapped, while the overlay is made
	defaultCgrp = "perch"
)

// Config configures a Driver.
type Config struct {
	// StateDir holds the driver's state; one per agent.
	StateDir string
	// ShimCommand runs the shim, e.g. {"/usr/local/bin/perch", "runc-shim"};
	// the driver appends the shim's flags.
	ShimCommand []string
	// RuncPath is the runc binary; "" looks it up in PATH.
	RuncPath string
	// CgroupParent is the cgroup every machine is placed under; "" is "perch".
	CgroupParent string
	// DiskMB is the size of each machine's writable layer (its own disk);
	// 0 is DefaultDiskMB.
	DiskMB int
	// Log receives the driver's messages; nil discards them.
	Log *slog.Logger
}

// Driver runs machines with runc. Its methods are safe for concurrent use.
type Driver struct {
	stateDir     string
	runcRoot     string
	runc         string
	shim         []string
	cgroupParent string
	diskMB       int
	log          *slog.Logger

	// escape is why machines are refused: runc has a known escape
	// (escapes.go); nil when it has none.
	escape error

	noOverlay bool // tests force the copy fallback
	copyOnce  sync.Once
	idmapOnce sync.Once // userns.go

	locks machinedir.Locks
}

// New returns a driver over cfg.StateDir, seeing the machines an earlier
// driver (an earlier agent process) left running there.
func New(cfg Config) (*Driver, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("runc: Config.StateDir is required")
	}
	if len(cfg.ShimCommand) == 0 {
		return nil, errors.New("runc: Config.ShimCommand is required (the perch binary and \"runc-shim\")")
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("runc: state dir: %w", err)
	}
	runcPath := cfg.RuncPath
	if runcPath == "" {
		runcPath = "runc"
	}
	if runcPath, err = exec.LookPath(runcPath); err != nil {
		return nil, fmt.Errorf("runc: %w; install runc (apt-get install runc) or set its path", err)
	}
	if runcPath, err = filepath.Abs(runcPath); err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	d := &Driver{
		stateDir:     stateDir,
		runcRoot:     filepath.Join(stateDir, "runc"),
		runc:         runcPath,
		shim:         slices.Clone(cfg.ShimCommand),
		cgroupParent: cfg.CgroupParent,
		diskMB:       cmp.Or(cfg.DiskMB, DefaultDiskMB),
		log:          cfg.Log,
	}
	if d.cgroupParent == "" {
		d.cgroupParent = defaultCgrp
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if err := checkEscapes(runcPath); errors.Is(err, ErrVulnerableRunc) {
		d.escape = err
		d.log.Error("refusing to create or start machines", "err", err)
	} else if err != nil {
		d.log.Warn("cannot check runc against known container escapes", "err", err)
	}
	for _, dir := range []string{d.runcRoot, filepath.Join(stateDir, "machines")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("runc: state dir: %w", err)
		}
	}
	d.reclaimIDRanges() // userns.go
	return d, nil
}

// Name is "runc".
func (d *Driver) Name() string { return "runc" }

func (d *Driver) dir(id string) string { return filepath.Join(d.stateDir, "machines", id) }

func (d *Driver) path(id, name string) string { return filepath.Join(d.dir(id), name) }

// lock serialises the changes made to one machine.
func (d *Driver) lock(id string) func() {
	return d.locks.Lock(id)
}

// checkID rejects ids that cannot name a directory, a runc container and a
// network namespace.
func checkID(id string) error {
	if err := hostnet.CheckID(id); err != nil {
		return fmt.Errorf("runc: %w", err)
	}
	return nil
}

// Logs lists the machine's stdout and stderr files.
func (d *Driver) Logs(id string) []runtime.LogFile {
	return []runtime.LogFile{
		{Stream: "stdout", Path: d.path(id, fileStdout)},
		{Stream: "stderr", Path: d.path(id, fileStderr)},
	}
}
