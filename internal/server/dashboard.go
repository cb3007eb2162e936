package server

import (
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/perchhq/perch/internal/ui"
)

// withDashboard serves the web dashboard (package ui) under /ui/ beside
// the API. The dashboard calls api in process with the session's token,
// so its pages go through the same guard and scopes as /v1. Its cookies
// are sealed with DataDir/ui-key (0600), so sessions survive a restart.
func (s *Server) withDashboard(api http.Handler) (http.Handler, error) {
	key, err := readOrCreateSecret(filepath.Join(s.cfg.DataDir, "ui-key"))
	if err != nil {
		return nil, fmt.Errorf("server: dashboard session key: %w", err)
	}
	s.ui, err = ui.New(ui.Config{API: api, Store: s.st, Budgets: s.billing.budgets, World: s.cfg.World,
		Demand: s.autoscaler.Demand, Secret: []byte(key), Log: s.log.With("component", "ui")})
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", s.ui)
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	mux.Handle("/", api)
	return mux, nil
}

// UIURL is the dashboard's address.
func (s *Server) UIURL() string { return s.URL() + "/ui/" }
