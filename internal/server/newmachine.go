package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

// What a new machine must pass beside its config: a free, valid name in
// an app that is not being deleted, and a region when none was named.

// machineNameRE: a machine's name is a DNS label, as it may become one.
var machineNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func validMachineName(name string) error {
	if !machineNameRE.MatchString(name) {
		return errf(http.StatusBadRequest, "machine name %q is not valid: use 1-63 lowercase letters, digits and hyphens, starting and ending with a letter or digit", name)
	}
	return nil
}

// nameTakenIn refuses name when another live machine of app has it.
func (s *Server) nameTakenIn(ctx context.Context, app, name, except string) error {
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, app+".*")
	if err != nil {
		return err
	}
	for _, m := range specs {
		if m.Name == name && m.ID != except && m.Desired != store.DesireDestroyed {
			return nameTaken("machine name %q is already taken in app %s (by machine %s); choose another name or leave name out", name, app, m.ID)
		}
	}
	return nil
}

// appOpen refuses a new machine in an app that is being deleted (or gone).
func (s *Server) appOpen(ctx context.Context, app string) error {
	a, _, err := store.Get[api.App](ctx, s.st.Apps, app)
	if errors.Is(err, store.ErrNotFound) {
		return errf(http.StatusNotFound, "app %q not found; it was deleted", app)
	}
	if err != nil {
		return err
	}
	if a.Status == api.AppDeleting {
		return errf(http.StatusConflict, "app %s is being deleted; no machines can be created in it. Create the app again once the delete is done", app)
	}
	return nil
}

// placeAnywhere places a machine created without a region: in the region
// nearest the app's oldest machine, or with none the first region (by
// code) with room, trying each region with a host in order of distance.
func (s *Server) placeAnywhere(ctx context.Context, app string, spec *store.MachineSpec, guest api.Guest) error {
	hosts, err := s.hosts(ctx)
	if err != nil {
		return err
	}
	var regions []string
	for _, h := range hosts {
		if h.Status == api.HostUp && h.Role != api.HostRoleControl && !slices.Contains(regions, h.Region) {
			regions = append(regions, h.Region)
		}
	}
	if len(regions) == 0 {
		return fmt.Errorf("%w: no host is up in any region; start an agent (perch agent) or name a region", scheduler.ErrUnplaceable)
	}
	slices.Sort(regions)
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, app+".*")
	if err != nil {
		return err
	}
	specs = slices.DeleteFunc(specs, func(m store.MachineSpec) bool { return m.Desired == store.DesireDestroyed })
	if len(specs) > 0 {
		oldest := slices.MinFunc(specs, func(a, b store.MachineSpec) int { return a.CreatedAt.Compare(b.CreatedAt) })
		if ns := s.cfg.World.Nearest(oldest.Region, regions); len(ns) == len(regions) {
			regions = ns
		}
	}
	var errs []string
	for _, rg := range regions {
		err := s.place(ctx, spec, scheduler.Request{Region: rg, Guest: guest})
		if err == nil {
			spec.Region = rg
			return nil
		}
		if !errors.Is(err, scheduler.ErrUnplaceable) {
			return err
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("%w: no region has room: %s", scheduler.ErrUnplaceable, strings.Join(errs, "; "))
}
