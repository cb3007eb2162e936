package server

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strconv"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Anycast addresses, shaped like Fly's IP assignments of the Machines
// API: GET/POST /v1/apps/{app}/ip_assignments, DELETE .../{ip}. The
// allocator is package anycast's, over perch_ips.

func (s *Server) ipAllocator() *anycast.Allocator {
	return &anycast.Allocator{KV: s.st.IPs, Pools: s.cfg.Anycast}
}

// ipError maps the allocator's errors to statuses.
func ipError(err error) error {
	switch {
	case errors.Is(err, anycast.ErrInvalid):
		return errf(http.StatusBadRequest, "%v", err)
	case errors.Is(err, anycast.ErrOutsidePools), errors.Is(err, anycast.ErrNotAssigned):
		return errf(http.StatusNotFound, "%v", err)
	case errors.Is(err, anycast.ErrInUse):
		return &httpError{code: http.StatusConflict, msg: err.Error(), status: "in_use"}
	case errors.Is(err, anycast.ErrExhausted):
		return &httpError{code: http.StatusUnprocessableEntity, msg: err.Error(), status: "pool_exhausted"}
	case errors.Is(err, anycast.ErrNoPool):
		return errf(http.StatusPreconditionFailed, "%v", err)
	}
	return err
}

func ipView(a anycast.Assignment) api.IPAssignment {
	return api.IPAssignment{IP: a.IP.String(), Region: "global", CreatedAt: a.CreatedAt, Shared: a.Shared(), Type: string(a.Kind)}
}

func (s *Server) listIPs(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	list, err := s.ipAllocator().List(r.Context(), a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	hosts, err := s.hosts(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	drained, err := s.ipAllocator().Drained(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := api.IPAssignments{IPs: []api.IPAssignment{}}
	for _, as := range list {
		v := ipView(as)
		v.Regions = announcing(hosts, as.IP)
		v.Draining = drained
		out.IPs = append(out.IPs, v)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) assignIP(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.AssignIPRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	switch {
	case req.Region != "" && req.Region != "global":
		s.fail(w, r, errf(http.StatusBadRequest, "region %q: Perch's addresses are anycast, announced from every healthy region; leave region out", req.Region))
		return
	case req.Network != "":
		s.fail(w, r, errf(http.StatusBadRequest, "network %q: Perch has no custom private networks for addresses; leave network out", req.Network))
		return
	case req.Type == "private_v6":
		s.fail(w, r, errf(http.StatusBadRequest, "type private_v6 (Flycast) is not implemented by Perch; use v4, shared_v4 or v6"))
		return
	}
	as, err := s.ipAllocator().Allocate(r.Context(), a.Name, a.Org, anycast.Kind(req.Type))
	if err != nil {
		s.fail(w, r, ipError(err))
		return
	}
	s.log.Info("anycast address allocated", "app", a.Name, "ip", as.IP, "type", as.Kind)
	writeJSON(w, http.StatusOK, ipView(as))
}

func (s *Server) releaseIP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	addr, err := netip.ParseAddr(r.PathValue("ip"))
	if err != nil {
		s.fail(w, r, errf(http.StatusBadRequest, "%q is not an IP address; give one that perch ips list shows", r.PathValue("ip")))
		return
	}
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	inUse, err := s.servingMachines(ctx, a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	as, err := s.ipAllocator().Release(ctx, a.Name, addr, inUse, force)
	if err != nil {
		s.fail(w, r, ipError(err))
		return
	}
	s.log.Info("anycast address released", "app", a.Name, "ip", as.IP, "forced", force && inUse > 0)
	w.WriteHeader(http.StatusOK)
}

// servingMachines counts app's machines that serve public services.
func (s *Server) servingMachines(ctx context.Context, app string) (int, error) {
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, app+".*")
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range specs {
		if m.Desired != store.DesireDestroyed && len(m.Config.Services) > 0 {
			n++
		}
	}
	return n, nil
}

// ensureAppIPs gives an app whose new machine has public services its
// default addresses (a dedicated IPv6, the shared IPv4) when the server
// has pools, as Fly does at an app's first deploy.
func (s *Server) ensureAppIPs(ctx context.Context, a api.App, c *api.MachineConfig) error {
	if !s.cfg.Anycast.Enabled() || len(c.Services) == 0 {
		return nil
	}
	made, err := s.ipAllocator().EnsureDefaults(ctx, a.Name, a.Org)
	for _, as := range made {
		s.log.Info("anycast address allocated", "app", a.Name, "ip", as.IP, "type", as.Kind, "why", "first machine with services")
	}
	if err != nil {
		return ipError(err)
	}
	return nil
}

// dedicatedApps are the apps with an address of their own (the edge
// serves their TCP ports there alone, so TCP ports collide per address).
func (s *Server) dedicatedApps(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	if !s.cfg.Anycast.Enabled() {
		return out, nil
	}
	list, err := s.ipAllocator().List(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, as := range list {
		if !as.Shared() {
			out[as.App] = true
		}
	}
	return out, nil
}

// announcing is the regions whose hosts that are up announce addr.
func announcing(hosts []api.Host, addr netip.Addr) []string {
	var out []string
	for _, h := range hosts {
		if h.Status != api.HostUp || h.BGP == nil || slices.Contains(out, h.Region) {
			continue
		}
		if slices.Contains(h.BGP.Announced, addr.String()) {
			out = append(out, h.Region)
		}
	}
	slices.Sort(out)
	return out
}

// Region drain (perch regions drain R, undrain R): the region's hosts
// withdraw their anycast announcements and keep serving what arrives;
// the record is perch_ips' drain.<region> (anycast/drain.go).

func (s *Server) drainRegion(w http.ResponseWriter, r *http.Request) {
	s.setDrain(w, r, true)
}

func (s *Server) undrainRegion(w http.ResponseWriter, r *http.Request) {
	s.setDrain(w, r, false)
}

func (s *Server) setDrain(w http.ResponseWriter, r *http.Request, drain bool) {
	code := r.PathValue("region")
	if _, ok := s.cfg.World.Lookup(code); !ok {
		s.fail(w, r, errf(http.StatusNotFound, "region %q is not a region this Perch knows; see perch regions --all", code))
		return
	}
	al := s.ipAllocator()
	if drain {
		d, err := al.DrainRegion(r.Context(), code)
		if err != nil {
			s.fail(w, r, ipError(err))
			return
		}
		s.log.Info("region drained: its hosts withdraw their anycast routes", "region", code)
		writeJSON(w, http.StatusOK, api.RegionDrain{Region: d.Region, Draining: true, Since: d.DrainedAt})
		return
	}
	was, err := al.UndrainRegion(r.Context(), code)
	if err != nil {
		s.fail(w, r, ipError(err))
		return
	}
	if was {
		s.log.Info("region undrained: its hosts announce their anycast routes again", "region", code)
	}
	writeJSON(w, http.StatusOK, api.RegionDrain{Region: code, Draining: false})
}
