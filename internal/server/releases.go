package server

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Releases: every deploy records one, with the next version of the app,
// the config it rolls out and, once its machines run, the image digest
// they resolved. A rollback deploys an earlier release's config by digest.
// Versions are given out under placeMu so two deploys never share one.

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rs, err := store.List[api.Release](r.Context(), s.st.Releases, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Newest first, as fly releases lists them.
	slices.SortFunc(rs, func(x, y api.Release) int { return y.Version - x.Version })
	if rs == nil {
		rs = []api.Release{}
	}
	writeJSON(w, http.StatusOK, rs)
}

func (s *Server) createRelease(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.CreateReleaseRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Image == "" {
		req.Image = req.Config.Image
	}
	if err := validateConfig(&req.Config); err != nil {
		s.fail(w, r, err)
		return
	}
	for g, mc := range req.Processes {
		if err := validateConfig(&mc); err != nil {
			s.fail(w, r, errf(http.StatusBadRequest, "processes[%q]: %v", g, err))
			return
		}
		req.Processes[g] = mc
	}
	if !validStrategy(req.Strategy) {
		s.fail(w, r, errf(http.StatusBadRequest, "strategy %q is not known; use rolling, immediate, canary or bluegreen", req.Strategy))
		return
	}
	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.placeMu.Unlock()
	rs, err := store.List[api.Release](ctx, s.st.Releases, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	next := 1
	for _, x := range rs {
		next = max(next, x.Version+1)
	}
	// Machines deployed before releases were recorded carry their version
	// in metadata; never give out one of theirs again.
	ms, err := store.List[store.MachineSpec](ctx, s.st.Machines, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, m := range ms {
		if v, ok := strings.CutPrefix(m.Config.Metadata["perch_release"], "v"); ok {
			if n, err := strconv.Atoi(v); err == nil {
				next = max(next, n+1)
			}
		}
	}
	now := time.Now().UTC()
	rel := api.Release{
		Version: next, App: a.Name, Status: api.ReleaseRunning, Image: req.Image, Config: req.Config, Processes: req.Processes,
		Strategy: req.Strategy, Regions: req.Regions, User: tokenName(r), Description: req.Description,
		CreatedAt: now, UpdatedAt: now,
	}
	if _, err := store.Create(ctx, s.st.Releases, store.ReleaseKey(a.Name, rel.Version), rel); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("release created", "app", a.Name, "version", rel.Version, "image", rel.Image)
	writeJSON(w, http.StatusCreated, rel)
}

func (s *Server) releaseKey(r *http.Request) (string, error) {
	a, err := s.app(r.Context(), r.PathValue("app"))
	if err != nil {
		return "", err
	}
	v, err := strconv.Atoi(strings.TrimPrefix(r.PathValue("version"), "v"))
	if err != nil || v < 1 {
		return "", errf(http.StatusBadRequest, "release version %q is not a number; perch releases lists them", r.PathValue("version"))
	}
	return store.ReleaseKey(a.Name, v), nil
}

func (s *Server) getRelease(w http.ResponseWriter, r *http.Request) {
	key, err := s.releaseKey(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rel, _, err := store.Get[api.Release](r.Context(), s.st.Releases, key)
	if errors.Is(err, store.ErrNotFound) {
		err = errf(http.StatusNotFound, "app %s has no release %s; perch releases lists them", r.PathValue("app"), r.PathValue("version"))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rel)
}

func (s *Server) updateRelease(w http.ResponseWriter, r *http.Request) {
	key, err := s.releaseKey(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.UpdateReleaseRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	switch req.Status {
	case api.ReleaseRunning, api.ReleaseComplete, api.ReleaseFailed, api.ReleaseSuperseded:
	default:
		s.fail(w, r, errf(http.StatusBadRequest, "release status %q is not valid; use running, complete, failed or superseded", req.Status))
		return
	}
	ctx := r.Context()
	rel, err := store.Modify(ctx, s.st.Releases, key, func(rel *api.Release) error {
		rel.Status = req.Status
		if req.ImageRef != "" {
			rel.ImageRef = req.ImageRef
		}
		rel.Reason = req.Reason
		rel.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		err = errf(http.StatusNotFound, "app %s has no release %s; perch releases lists them", r.PathValue("app"), r.PathValue("version"))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// A complete release supersedes the complete ones before it.
	if rel.Status == api.ReleaseComplete {
		rs, err := store.List[api.Release](ctx, s.st.Releases, rel.App+".*")
		if err == nil {
			for _, x := range rs {
				if x.Version < rel.Version && x.Status == api.ReleaseComplete {
					_, _ = store.Modify(ctx, s.st.Releases, store.ReleaseKey(x.App, x.Version), func(o *api.Release) error {
						o.Status = api.ReleaseSuperseded
						return nil
					})
				}
			}
		}
	}
	writeJSON(w, http.StatusOK, rel)
}

func validStrategy(s string) bool {
	switch s {
	case "", "rolling", "immediate", "canary", "bluegreen":
		return true
	}
	return false
}
