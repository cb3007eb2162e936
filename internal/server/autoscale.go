package server

import (
	"context"
	"errors"
	"fmt"
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
	if len(cfg.Mounts) > 0 {
		cfg.Mounts = slices.Clone(cfg.Mounts)
		if err := c.s.volumeForNewMachine(ctx, app, region, &cfg.Mounts[0]); err != nil {
			return api.Machine{}, err
		}
	}
	sp, err := c.s.newMachine(ctx, a, api.CreateMachineRequest{Region: region, Config: cfg}, "autoscaler")
	if err != nil {
		return api.Machine{}, err
	}
	c.s.log.Info("machine created", "app", app, "machine", sp.ID, "region", region, "host", sp.HostID, "by", "autoscaler")
	return c.s.view(ctx, sp)
}

// volumeForNewMachine points m, the template machine's mount, at a volume
// of its own for a new machine in region, as fly scale count does for an
// app with volumes: a free volume of the mount's name there (one a machine
// the autoscaler removed left behind), else a new one of the template
// volume's size and snapshot settings. A machine whose create then fails
// leaves the new volume free, for the next one to take.
func (s *Server) volumeForNewMachine(ctx context.Context, app, region string, m *api.Mount) error {
	vols, err := store.List[store.VolumeRecord](ctx, s.st.Volumes, app+".*")
	if err != nil {
		return err
	}
	attached, err := s.attachedTo(ctx, app)
	if err != nil {
		return err
	}
	req := api.CreateVolumeRequest{Name: m.Name, Region: region, SizeGB: max(m.SizeGB, 1)}
	for _, v := range vols {
		if v.ID == m.Volume { // the template's own: its settings
			req.SnapshotRetention, req.AutoBackupEnabled = &v.SnapshotRetention, &v.AutoBackupEnabled
		}
	}
	for _, v := range vols {
		if _, busy := attached[v.ID]; v.Name == m.Name && v.Region == region && v.State == api.VolumeCreated && !busy {
			m.Volume = v.ID
			return nil
		}
	}
	v, err := s.newVolume(ctx, app, req)
	if err != nil {
		return fmt.Errorf("a new machine mounts volume %s, and making one in %s failed: %w", m.Name, region, err)
	}
	s.log.Info("volume created", "app", app, "volume", v.ID, "name", v.Name, "region", v.Region, "host", v.HostID, "size_gb", v.SizeGB, "by", "autoscaler")
	m.Volume = v.ID
	return nil
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
