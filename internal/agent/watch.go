package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/store"
)

// watchMachines feeds every change of a machine placed on this host to that
// machine's worker, and after the initial state destroys leftovers the
// runtime has but the store no longer wants.
func (a *Agent) watchMachines(ctx context.Context) error {
	for ctx.Err() == nil {
		if err := a.watchOnce(ctx); err != nil {
			a.log.Warn("machine watch ended; watching again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

// watchOnce watches until ctx is done, the watch breaks, or the connection
// to NATS was re-established (the server may have lost the watch).
func (a *Agent) watchOnce(ctx context.Context) error {
	reconnected := a.st.Reconnected()
	w, err := a.st.Machines.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch machines: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reconnected:
			a.log.Info("reconnected to NATS; watching machines again")
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("machine watch closed")
			}
			if e == nil {
				a.sweepOrphans(ctx)
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				a.mu.Lock()
				wk := a.workers[e.Key()]
				a.mu.Unlock()
				if wk != nil {
					wk.remove()
				}
				continue
			}
			var spec store.MachineSpec
			if err := json.Unmarshal(e.Value(), &spec); err != nil {
				a.log.Warn("undecodable machine spec", "key", e.Key(), "err", err)
				continue
			}
			if spec.HostID != a.host.ID {
				continue
			}
			a.mu.Lock()
			wk := a.workers[e.Key()]
			if wk == nil {
				wk = a.newWorker(ctx, spec)
				a.workers[e.Key()] = wk
			}
			a.mu.Unlock()
			wk.update(spec)
		}
	}
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
}

func (a *Agent) forget(key string) {
	a.mu.Lock()
	delete(a.workers, key)
	a.mu.Unlock()
}
