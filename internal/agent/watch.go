package agent

import (
	"context"
	"encoding/json"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/store"
)

// watchMachines feeds every change of a machine placed on this host to that
// machine's worker until ctx is done. Each time the watch reads the whole
// bucket (first, and again after a reconnection to NATS), workers of
// machines no longer in it are removed and leftovers the runtime has but
// the store no longer wants are destroyed.
func (a *Agent) watchMachines(ctx context.Context) error {
	a.st.Watch(ctx, a.st.Machines, a.log, func(c store.Change) {
		switch {
		case c.All != nil:
			a.mu.Lock()
			var gone []*worker
			for key, wk := range a.workers {
				if _, ok := c.All[key]; !ok {
					gone = append(gone, wk)
				}
			}
			a.mu.Unlock()
			for _, wk := range gone {
				wk.remove()
			}
			// Every machine in the rules first, then to its worker.
			specs := map[string]store.MachineSpec{}
			for key, v := range c.All {
				if spec, ok := a.decodeSpec(key, v); ok {
					specs[key] = spec
					a.policySet(key, spec, false) // netpolicy.go
				}
			}
			a.applyPolicy()
			for key, spec := range specs {
				a.handSpec(ctx, key, spec)
			}
			a.sweepOrphans(ctx)
		case c.Deleted:
			a.mu.Lock()
			wk := a.workers[c.Key]
			a.mu.Unlock()
			if wk != nil {
				wk.remove()
			}
		default:
			if spec, ok := a.decodeSpec(c.Key, c.Value); ok {
				a.policySet(c.Key, spec, true)
				a.handSpec(ctx, c.Key, spec)
			}
		}
	})
	return nil
}

// decodeSpec decodes a machine's spec, if the machine is placed on this
// host.
func (a *Agent) decodeSpec(key string, v []byte) (store.MachineSpec, bool) {
	var spec store.MachineSpec
	if err := json.Unmarshal(v, &spec); err != nil {
		a.log.Warn("undecodable machine spec", "key", key, "err", err)
		return spec, false
	}
	return spec, spec.HostID == a.host.ID
}

// handSpec hands a machine's spec to its worker, made if need be.
func (a *Agent) handSpec(ctx context.Context, key string, spec store.MachineSpec) {
	a.mu.Lock()
	wk := a.workers[key]
	if wk == nil {
		wk = a.newWorker(ctx, spec)
		a.workers[key] = wk
	}
	a.mu.Unlock()
	wk.update(spec)
}

// sweepOrphans destroys runtime machines that have no spec on this host:
// destroyed while the host was down, or left by a crash mid-destroy.
func (a *Agent) sweepOrphans(ctx context.Context) {
	ids, err := a.listEverywhere(ctx)
	if err != nil {
		a.log.Warn("list runtime machines", "err", err)
		return
	}
	a.mu.Lock()
	known := map[string]bool{}
	for _, w := range a.workers {
		known[w.id] = true
	}
	a.mu.Unlock()
	for id, drv := range ids {
		if known[id] {
			continue
		}
		a.log.Info("destroying orphaned machine", "machine", id, "runtime", drv.Name())
		if err := drv.Destroy(ctx, id); err != nil {
			a.log.Warn("destroy orphan", "machine", id, "err", err)
		}
		_ = hostnet.Detach(id)
		removeLocal(a.cfg.StateDir, id)
	}
	a.sweepVolumeMounts() // volumes.go: unmounted, kept
}

func (a *Agent) forget(key string) {
	a.mu.Lock()
	delete(a.workers, key)
	a.mu.Unlock()
	a.policyForget(key) // netpolicy.go
	if a.meter != nil {
		a.meter.Forget(key) // metering.go
	}
}
