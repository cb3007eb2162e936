package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/store"
)

var appNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) {
	var req api.CreateAppRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	name := req.AppName
	if req.Name != "" {
		if name != "" && name != req.Name {
			s.fail(w, r, errf(http.StatusBadRequest, "name %q and app_name %q differ; send one of them", req.Name, req.AppName))
			return
		}
		name = req.Name
	}
	if req.Network != "" {
		s.fail(w, r, errf(http.StatusBadRequest, "network %q: Perch has no custom private networks; every app of an organization shares one. Leave network out", req.Network))
		return
	}
	if !appNameRE.MatchString(name) {
		s.fail(w, r, errf(http.StatusBadRequest, "app name %q is not valid: use 1-63 lowercase letters, digits and dashes, starting with a letter", name))
		return
	}
	app := api.App{Name: name, Org: req.Org, Status: api.AppDeployed, CreatedAt: time.Now().UTC()}
	if err := s.appOrg(r, &app); err != nil {
		s.fail(w, r, err)
		return
	}
	app = appView(app)
	if _, err := store.Create(r.Context(), s.st.Apps, app.Name, app); err != nil {
		if errors.Is(err, store.ErrExists) {
			if old, _, gerr := store.Get[api.App](r.Context(), s.st.Apps, app.Name); gerr == nil && old.Status == api.AppDeleting {
				s.fail(w, r, nameTaken("app %s is being deleted; create it again once the delete is done (DELETE it again to finish a delete that timed out)", app.Name))
				return
			}
			s.fail(w, r, nameTaken("app name %q is already taken; choose another name", app.Name))
			return
		}
		s.fail(w, r, err)
		return
	}
	if err := s.st.EnsureAppLogs(r.Context(), app.Name, s.cfg.LogBytesPerApp); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("app created", "app", app.Name)
	writeJSON(w, http.StatusCreated, app)
}

// appOrg settles the organisation a new app goes to: the one asked for, or
// the token's own (the admin's default: DefaultOrg). "personal", Fly's
// name for a user's own organisation, is the token's own. An organisation's
// token creates apps only in its organisation, and an app-narrowed one
// only that app.
func (s *Server) appOrg(r *http.Request, app *api.App) error {
	p := principalOf(r)
	if p.Kind != auth.KindAdmin {
		if app.Org == "" || app.Org == DefaultOrg {
			app.Org = p.Org // Fly's "personal": the token's own organisation
		}
		if app.Org != p.Org {
			return errf(http.StatusForbidden, "cannot create app %s in organisation %q: your token is of organisation %q; use one of %q, or leave the organisation out", app.Name, app.Org, p.Org, app.Org)
		}
		if !p.AllowsApp(app.Name) {
			return errf(http.StatusForbidden, "cannot create app %s: this token is narrowed to app %s", app.Name, strings.Join(p.Apps, ","))
		}
		return nil
	}
	app.Org = cmp.Or(app.Org, DefaultOrg)
	if !appNameRE.MatchString(app.Org) {
		return errf(http.StatusBadRequest, "organisation %q is not valid: use 1-63 lowercase letters, digits and dashes, starting with a letter", app.Org)
	}
	// The operator may place an app in an organisation not made yet.
	return s.ensureOrg(r.Context(), app.Org)
}

// appView fills what records written before these fields existed lack.
func appView(a api.App) api.App {
	a.ID = cmp.Or(a.ID, a.Name)
	a.Organization = api.AppOrganization{Name: a.Org, Slug: a.Org}
	a.Status = cmp.Or(a.Status, api.AppDeployed)
	return a
}

// listApps answers as Fly does, {total_apps, apps}, only org_slug's apps
// when it is given; "personal", as on Fly, is the token's own
// organisation.
func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	apps, err := store.List[api.App](r.Context(), s.st.Apps, ">")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	org := r.URL.Query().Get("org_slug")
	p := principalOf(r)
	if org == DefaultOrg && p.Kind != auth.KindAdmin {
		org = p.Org // Fly's "personal": the token's own organisation
	}
	out := api.AppList{Apps: []api.App{}}
	for _, a := range apps {
		a = appView(a)
		if p.Kind != auth.KindAdmin && (a.Org != p.Org || !p.AllowsApp(a.Name)) {
			continue // an organisation's token sees its own apps only
		}
		if org == "" || a.Org == org {
			out.Apps = append(out.Apps, a)
		}
	}
	out.TotalApps = len(out.Apps)
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) app(ctx context.Context, name string) (api.App, error) {
	if !appNameRE.MatchString(name) {
		return api.App{}, errf(http.StatusNotFound, "app %q not found", name)
	}
	a, _, err := store.Get[api.App](ctx, s.st.Apps, name)
	if errors.Is(err, store.ErrNotFound) {
		return a, errf(http.StatusNotFound, "app %q not found; perch apps list shows your apps", name)
	}
	return appView(a), err
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// deleteApp marks the app deleting (so that no machine is created in it
// any more: newMachine checks under placeMu), asks every machine of it
// to be destroyed, waits for them to be gone, then removes the app. A
// delete that timed out leaves the app deleting; deleting it again
// carries on.
func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	_, err = store.Modify(ctx, s.st.Apps, a.Name, func(app *api.App) error {
		app.Status = api.AppDeleting
		return nil
	})
	s.placeMu.Unlock()
	if err != nil {
		s.fail(w, r, fmt.Errorf("mark app %s deleting: %w", a.Name, err))
		return
	}
	// The name becomes free only when its machines are gone, so that a new
	// app of the same name never inherits one.
	deadline := time.Now().Add(60 * time.Second)
	destroyed := 0
	for {
		left, err := store.List[store.MachineSpec](ctx, s.st.Machines, a.Name+".*")
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if len(left) == 0 {
			break
		}
		for _, m := range left {
			if err := s.destroy(ctx, m, true); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		destroyed = max(destroyed, len(left))
		if time.Now().After(deadline) {
			s.fail(w, r, errf(http.StatusGatewayTimeout, "app %s: %d machines are still being destroyed; the app stays deleting (no new machines): delete it again later to finish", a.Name, len(left)))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := store.Delete(ctx, s.st.Apps, a.Name); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.deleteSecrets(ctx, a.Name); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.st.DeleteAppLogs(ctx, a.Name); err != nil {
		s.fail(w, r, err)
		return
	}
	if rs, err := store.List[api.Release](ctx, s.st.Releases, a.Name+".*"); err == nil {
		for _, rel := range rs {
			_ = store.Delete(ctx, s.st.Releases, store.ReleaseKey(a.Name, rel.Version))
		}
	}
	s.log.Info("app destroyed", "app", a.Name, "machines", destroyed)
	writeJSON(w, http.StatusAccepted, map[string]any{"ok": true})
}
