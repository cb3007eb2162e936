package server

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

var appNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

func (s *Server) createApp(w http.ResponseWriter, r *http.Request) {
	var req api.CreateAppRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if !appNameRE.MatchString(req.AppName) {
		s.fail(w, r, errf(http.StatusBadRequest, "app name %q is not valid: use 1-63 lowercase letters, digits and dashes, starting with a letter", req.AppName))
		return
	}
	app := api.App{Name: req.AppName, Org: req.Org, CreatedAt: time.Now().UTC()}
	if app.Org == "" {
		app.Org = "personal"
	}
	if _, err := store.Create(r.Context(), s.st.Apps, app.Name, app); err != nil {
		if errors.Is(err, store.ErrExists) {
			s.fail(w, r, errf(http.StatusConflict, "app name %q is already taken; choose another name", app.Name))
			return
		}
		s.fail(w, r, err)
		return
	}
	s.log.Info("app created", "app", app.Name)
	writeJSON(w, http.StatusCreated, app)
}

func (s *Server) listApps(w http.ResponseWriter, r *http.Request) {
	apps, err := store.List[api.App](r.Context(), s.st.Apps, ">")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if apps == nil {
		apps = []api.App{}
	}
	writeJSON(w, http.StatusOK, apps)
}

func (s *Server) app(ctx context.Context, name string) (api.App, error) {
	if !appNameRE.MatchString(name) {
		return api.App{}, errf(http.StatusNotFound, "app %q not found", name)
	}
	a, _, err := store.Get[api.App](ctx, s.st.Apps, name)
	if errors.Is(err, store.ErrNotFound) {
		return a, errf(http.StatusNotFound, "app %q not found; perch apps list shows your apps", name)
	}
	return a, err
}

func (s *Server) getApp(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// deleteApp asks every machine of the app to be destroyed, then removes the
// app. Hosts tear the machines down as they see the change.
func (s *Server) deleteApp(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, m := range specs {
		if err := s.destroy(ctx, m, true); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	// The name becomes free only when its machines are gone, so that a new
	// app of the same name never inherits one.
	deadline := time.Now().Add(60 * time.Second)
	for {
		left, err := store.List[store.MachineSpec](ctx, s.st.Machines, a.Name+".*")
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			s.fail(w, r, errf(http.StatusGatewayTimeout, "app %s: %d machines are still being destroyed; try again later", a.Name, len(left)))
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
	if rs, err := store.List[api.Release](ctx, s.st.Releases, a.Name+".*"); err == nil {
		for _, rel := range rs {
			_ = store.Delete(ctx, s.st.Releases, store.ReleaseKey(a.Name, rel.Version))
		}
	}
	s.log.Info("app destroyed", "app", a.Name, "machines", len(specs))
	writeJSON(w, http.StatusAccepted, map[string]any{"ok": true})
}
