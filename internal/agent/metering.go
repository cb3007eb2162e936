package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/billing"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/volume"
)

// Metering (package billing): every machine's time by state and the
// edge's bytes out by app, closed every MeterInterval into records that
// are written to meter.json in the state dir before they go to the
// PERCH_USAGE stream, so a cut from NATS or a SIGKILL loses nothing and a
// resend counts once.

// startMeter loads the spool; runMeter runs it.
func (a *Agent) startMeter() error {
	clock := a.cfg.Clock
	if clock == nil {
		c, err := billing.ClockFromEnv()
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		clock = c
	}
	a.clock = clock
	m, err := billing.NewMeter(billing.MeterConfig{
		Host: a.host.ID, Region: a.cfg.Region, Path: filepath.Join(a.cfg.StateDir, "meter.json"),
		Clock: clock, Publish: a.publishUsage, Log: a.log.With("component", "meter"),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.meter = m
	return nil
}

func (a *Agent) runMeter(ctx context.Context) {
	every := a.cfg.MeterInterval
	if every == 0 {
		every = billing.DefaultInterval
	}
	a.meter.Run(ctx, every, a.edge.TakeEgress)
}

// publishUsage sends one batch; the message id lets JetStream drop a
// resend inside its window, the ledger's record ids after it.
func (a *Agent) publishUsage(ctx context.Context, b billing.Batch) error {
	data, err := json.Marshal(b)
	if err != nil {
		return err
	}
	id := fmt.Sprintf("%s.%s.%d", b.Host, b.Records[0].ID, len(b.Records))
	_, err = a.st.JetStream().Publish(ctx, billing.SubjectPrefix+a.host.ID, data, jetstream.WithMsgID(id))
	return err
}

// meterObserve tells the meter a machine's state; the worker calls it on
// every state it reports, before the store write (which may fail). A
// stopped or suspended machine's disk (its writable layer or qcow2
// overlay, and snapshot) is measured then: it does not change until the
// machine starts again.
func (w *worker) meterObserve(spec store.MachineSpec, state string) {
	m := w.a.meter
	if m == nil {
		return
	}
	var disk billing.Storage
	if billing.StorageOnly(state) {
		if du, ok := w.driver().(perchrt.DiskUser); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			n, err := du.DiskUsage(ctx, w.id)
			cancel()
			if err != nil {
				w.log.Warn("metering: cannot measure the machine's disk; its storage is not billed", "err", err)
			}
			disk.RootfsGB = float64(n) / 1e9
		}
	}
	disk.VolumeGB = w.volumeGB(spec)
	m.Observe(w.key, spec.App, spec.ID, spec.Region, spec.Config.Guest, state, disk)
}

// volumeGB is the provisioned size, in GB, of the volumes the machine
// mounts (their image files' sizes: what the volume may hold, as Fly
// bills it), priced in every state. A volume no machine mounts is not
// metered (docs/budgets.md).
func (w *worker) volumeGB(spec store.MachineSpec) float64 {
	var gb float64
	for _, m := range spec.Config.Mounts {
		if !volumeIDRE.MatchString(m.Volume) {
			continue
		}
		if fi, err := os.Stat(volume.Image(volumeDir(w.a.cfg.StateDir, m.Volume))); err == nil {
			gb += float64(fi.Size()) / 1e9
		}
	}
	return gb
}
