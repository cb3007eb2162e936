package billing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// DefaultInterval is how often a host closes its machines' intervals and
// sends them.
const DefaultInterval = 10 * time.Second

// maxBatch is the most records in one message (well under NATS's 1 MB).
const maxBatch = 1000

// staleAfter drops a machine the spool remembers but the host no longer
// reports (destroyed while the agent was down), in real time.
const staleAfter = time.Hour

// MeterConfig configures a host's Meter.
type MeterConfig struct {
	Host   string
	Region string
	// Path is the spool file: the open interval of each machine and the
	// records not yet acknowledged by the stream, rewritten atomically.
	Path  string
	Clock Clock
	// Publish sends one batch and returns once the stream has it.
	Publish func(ctx context.Context, b Batch) error
	Log     *slog.Logger
}

// Meter records a host's machines' time by state, and its edge's bytes out
// by app, into records that survive a lost control plane and a killed
// agent: each closed interval is written to the spool before it is sent,
// and the spool's cursors are the next interval's start, so a resend
// carries the same IDs and a restart neither skips nor repeats time.
type Meter struct {
	cfg MeterConfig

	mu    sync.Mutex
	spool spoolFile
	seen  map[string]bool // machines reported since this process started
	since time.Time       // real time the spool was loaded
}

type spoolFile struct {
	Machines map[string]*meterEntry `json:"machines"`
	// EgressSince is the start of the open egress interval.
	EgressSince time.Time `json:"egress_since"`
	Pending     []Record  `json:"pending"`
}

type meterEntry struct {
	App      string `json:"app"`
	Machine  string `json:"machine"`
	Region   string `json:"region"`
	State    string `json:"state"`
	CPUKind  string `json:"cpu_kind,omitempty"`
	CPUs     int    `json:"cpus"`
	MemoryMB int    `json:"memory_mb"`
	Storage
	Since time.Time `json:"since"` // start of the open interval
}

// Storage is what a machine keeps on the host's disk, in GB (10^9 bytes):
// its root filesystem's own part (writable layer, qcow2 overlay, a
// suspended machine's snapshot), priced while it is stopped or
// suspended, and the provisioned size of the volumes it mounts, priced always.
type Storage struct {
	RootfsGB float64 `json:"rootfs_gb,omitempty"`
	VolumeGB float64 `json:"volume_gb,omitempty"`
}

// NewMeter loads the spool at cfg.Path (empty if there is none).
func NewMeter(cfg MeterConfig) (*Meter, error) {
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Meter{cfg: cfg, seen: map[string]bool{}, since: time.Now()}
	b, err := os.ReadFile(cfg.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("meter: %w", err)
	default:
		if err := json.Unmarshal(b, &m.spool); err != nil {
			return nil, fmt.Errorf("meter: spool %s is damaged (%w); move it away to start metering afresh", cfg.Path, err)
		}
	}
	if m.spool.Machines == nil {
		m.spool.Machines = map[string]*meterEntry{}
	}
	if m.spool.EgressSince.IsZero() {
		m.spool.EgressSince = cfg.Clock.Now()
	}
	return m, nil
}

// meterState is the billed state of a machine state: "started" (compute),
// "suspended" or "stopped" (storage); "" is none (destroyed).
func meterState(s string) string {
	switch s {
	case api.StateStarted, "stopping", "starting":
		return api.StateStarted
	case api.StateSuspended, "suspending":
		return api.StateSuspended
	case api.StateDestroyed, "destroying":
		return ""
	}
	return api.StateStopped
}

// StorageOnly reports whether state is billed as storage only (stopped or
// suspended), so the caller knows to measure the machine's disk.
func StorageOnly(state string) bool {
	st := meterState(state)
	return st == api.StateStopped || st == api.StateSuspended
}

// Observe records machine key's current state and what it keeps on disk
// (its rootfs counts only while stopped or suspended); a change closes
// the open interval at the old state.
func (m *Meter) Observe(key, app, machine, region string, g api.Guest, state string, disk Storage) {
	st := meterState(state)
	if st == "" {
		m.Forget(key)
		return
	}
	if st == api.StateStarted {
		disk.RootfsGB = 0
	}
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seen[key] = true
	e := m.spool.Machines[key]
	if e == nil {
		m.spool.Machines[key] = &meterEntry{App: app, Machine: machine, Region: region, State: st,
			CPUKind: g.CPUKind, CPUs: g.CPUs, MemoryMB: g.MemoryMB, Storage: disk, Since: now}
		return
	}
	if e.State != st || e.CPUs != g.CPUs || e.MemoryMB != g.MemoryMB || e.CPUKind != g.CPUKind || e.Storage != disk {
		m.close(e, now)
		e.State, e.CPUKind, e.CPUs, e.MemoryMB, e.Storage = st, g.CPUKind, g.CPUs, g.MemoryMB, disk
	}
}

// Forget closes a destroyed machine's last interval.
func (m *Meter) Forget(key string) {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.spool.Machines[key]; e != nil {
		m.close(e, now)
		delete(m.spool.Machines, key)
		delete(m.seen, key)
	}
}

// close moves e's open interval up to now into the pending records.
func (m *Meter) close(e *meterEntry, now time.Time) {
	if !now.After(e.Since) {
		return
	}
	r := Record{ID: MachineRecordID(e.Machine, e.Since), Kind: KindMachine, App: e.App, Region: e.Region, Host: m.cfg.Host,
		Machine: e.Machine, Start: e.Since, End: now, State: e.State, CPUKind: e.CPUKind, CPUs: e.CPUs, MemoryMB: e.MemoryMB,
		RootfsGB: e.RootfsGB, VolumeGB: e.VolumeGB}
	m.spool.Pending = append(m.spool.Pending, Split(r)...)
	e.Since = now
}

// Close ends the current interval: every reported machine's open interval
// and the egress counted since the last one (bytes by app) become pending
// records, written to the spool. Machines remembered from before a
// restart but not reported again wait (their time is counted once they
// are), and are dropped after an hour.
func (m *Meter) Close(egress map[string]int64) error {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, key := range slices.Sorted(maps.Keys(m.spool.Machines)) {
		e := m.spool.Machines[key]
		switch {
		case m.seen[key]:
			m.close(e, now)
		case time.Since(m.since) > staleAfter:
			delete(m.spool.Machines, key)
		}
	}
	if now.After(m.spool.EgressSince) {
		for _, app := range slices.Sorted(maps.Keys(egress)) {
			if egress[app] <= 0 {
				continue
			}
			r := Record{ID: EgressRecordID(m.cfg.Host, app, now), Kind: KindEgress, App: app, Region: m.cfg.Region,
				Host: m.cfg.Host, Start: m.spool.EgressSince, End: now, Bytes: egress[app]}
			m.spool.Pending = append(m.spool.Pending, Split(r)...)
		}
		m.spool.EgressSince = now
	}
	return m.save()
}

// Pending is how many records wait to be sent.
func (m *Meter) Pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.spool.Pending)
}

// Send publishes the pending records in batches, dropping each from the
// spool once the stream has it. A failed publish leaves it (and the rest)
// for the next call.
func (m *Meter) Send(ctx context.Context) error {
	for {
		m.mu.Lock()
		n := min(len(m.spool.Pending), maxBatch)
		batch := Batch{Host: m.cfg.Host, Records: slices.Clone(m.spool.Pending[:n])}
		m.mu.Unlock()
		if n == 0 {
			return nil
		}
		if err := m.cfg.Publish(ctx, batch); err != nil {
			return fmt.Errorf("meter: send %d records: %w", n, err)
		}
		m.mu.Lock()
		// Only Send removes records, and one Send runs at a time, so
		// the first n are the ones sent.
		m.spool.Pending = slices.Delete(m.spool.Pending, 0, n)
		err := m.save()
		m.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// save writes the spool atomically; m.mu is held.
func (m *Meter) save() error {
	b, err := json.Marshal(&m.spool)
	if err != nil {
		return fmt.Errorf("meter: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(m.cfg.Path), 0o700); err != nil {
		return fmt.Errorf("meter: %w", err)
	}
	tmp := m.cfg.Path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("meter: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, m.cfg.Path)
	}
	if err != nil {
		return fmt.Errorf("meter: write spool: %w", err)
	}
	return nil
}

// Run closes and sends an interval every interval until ctx is done;
// egress is asked for the bytes out by app since its last call.
func (m *Meter) Run(ctx context.Context, interval time.Duration, egress func() map[string]int64) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.Close(egress()); err != nil {
			m.cfg.Log.Error("metering: cannot write the spool; records of this interval may be lost", "err", err)
		}
		sctx, cancel := context.WithTimeout(ctx, interval)
		if err := m.Send(sctx); err != nil && ctx.Err() == nil {
			m.cfg.Log.Warn("metering: records kept on disk until the control plane takes them", "pending", m.Pending(), "err", err)
		}
		cancel()
	}
}
