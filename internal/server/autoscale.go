package server

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/autoscale"
	"github.com/perchhq/perch/internal/store"
)

// The autoscaler (package autoscale) runs in every control plane; one at a
// time acts, under the "autoscaler" lease. It reaches machines through
// cluster, which creates and destroys them as the API does.

type cluster struct{ s *Server }

var _ autoscale.Cluster = cluster{}

func (c cluster) Machines(ctx context.Context, app string) ([]api.Machine, error) {
	specs, err := store.List[store.MachineSpec](ctx, c.s.st.Machines, app+".*")
	if err != nil {
		return nil, err
	}
	var out []api.Machine
	for _, sp := range specs {
		if sp.Desired == store.DesireDestroyed {
			continue
		}
		m, err := c.s.view(ctx, sp)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (c cluster) HostRegions(ctx context.Context) ([]string, error) {
	hs, err := c.s.hosts(ctx)
	if err != nil {
		return nil, err
	}
	var rs []string
	for _, h := range hs {
		if h.Status == api.HostUp && h.Role == "" && !slices.Contains(rs, h.Region) {
			rs = append(rs, h.Region)
		}
	}
	return rs, nil
}

func (c cluster) CreateMachine(ctx context.Context, app, region string, cfg api.MachineConfig) (api.Machine, error) {
	a, err := c.s.app(ctx, app)
	if err != nil {
		return api.Machine{}, err
	}
	sp, err := c.s.newMachine(ctx, a, api.CreateMachineRequest{Region: region, Config: cfg}, "autoscaler")
	if err != nil {
		return api.Machine{}, err
	}
	c.s.log.Info("machine created", "app", app, "machine", sp.ID, "region", region, "host", sp.HostID, "by", "autoscaler")
	return c.s.view(ctx, sp)
}

func (c cluster) DestroyMachine(ctx context.Context, app, id string) error {
	sp, _, err := store.Get[store.MachineSpec](ctx, c.s.st.Machines, store.MachineKey(app, id))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.s.destroy(ctx, sp, false) // the host drains it first
}

func (s *Server) nearest(origin string, allowed []string) string {
	if ns := s.cfg.World.Nearest(origin, allowed); len(ns) > 0 {
		return ns[0]
	}
	return allowed[0]
}

func (s *Server) autoscaleView(ctx context.Context, app string) (api.Autoscale, error) {
	rec, _, err := store.Get[store.AutoscaleRecord](ctx, s.st.Autoscale, app)
	if errors.Is(err, store.ErrNotFound) {
		return api.Autoscale{App: app}, nil
	}
	if err != nil {
		return api.Autoscale{}, err
	}
	return api.Autoscale{App: app, Enabled: true, Settings: rec.Settings, Regions: rec.Regions, Decisions: rec.Decisions, UpdatedAt: rec.UpdatedAt}, nil
}

func (s *Server) getAutoscale(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	v, err := s.autoscaleView(r.Context(), a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) putAutoscale(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var set api.AutoscaleSettings
	if err := decode(r, &set); err != nil {
		s.fail(w, r, err)
		return
	}
	known := func(code string) bool { _, ok := s.cfg.World.Lookup(code); return ok }
	if err := autoscale.Validate(set, known); err != nil {
		s.fail(w, r, errf(http.StatusBadRequest, "autoscale: %s", err))
		return
	}
	_, err = store.Modify(ctx, s.st.Autoscale, a.Name, func(rec *store.AutoscaleRecord) error { rec.Settings = set; return nil })
	if errors.Is(err, store.ErrNotFound) {
		_, err = store.Create(ctx, s.st.Autoscale, a.Name, store.AutoscaleRecord{App: a.Name, Settings: set})
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("autoscale set", "app", a.Name, "min", set.MinMachines, "max", set.MaxMachines)
	v, err := s.autoscaleView(ctx, a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) deleteAutoscale(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := store.Delete(r.Context(), s.st.Autoscale, a.Name); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}
