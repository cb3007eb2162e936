package server

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// autoDestroy destroys the machines whose config asks for it (Fly's
// config.auto_destroy) once their host reports them ended for their
// current spec: stopped or failed. The control plane decides it, as it
// decides every desired state; control planes sharing a NATS may both
// ask, which destroy makes harmless.
func (s *Server) autoDestroy(ctx context.Context) {
	log := s.log.With("component", "auto-destroy")
	s.st.Watch(ctx, s.st.Status, log, func(c store.Change) {
		if c.All != nil {
			for _, v := range c.All {
				s.autoDestroyOne(ctx, v)
			}
			return
		}
		if !c.Deleted {
			s.autoDestroyOne(ctx, c.Value)
		}
	})
}

func (s *Server) autoDestroyOne(ctx context.Context, value []byte) {
	var st store.MachineStatus
	if json.Unmarshal(value, &st) != nil || (st.State != api.StateStopped && st.State != api.StateFailed) {
		return
	}
	sp, _, err := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey(st.App, st.ID))
	if err != nil || !sp.Config.AutoDestroy || sp.Desired == store.DesireDestroyed || st.Generation != sp.Generation {
		if err != nil && !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			s.log.Warn("auto-destroy: read machine", "app", st.App, "machine", st.ID, "err", err)
		}
		return
	}
	if err := s.destroy(ctx, sp, false); err != nil && ctx.Err() == nil {
		s.log.Warn("auto-destroy", "app", st.App, "machine", st.ID, "err", err)
		return
	}
	s.log.Info("machine ended; destroyed as its config asks (auto_destroy)", "app", st.App, "machine", st.ID, "state", st.State)
}
