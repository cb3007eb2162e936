// Package ui is Perch's web dashboard, served by `perch server` under
// /ui/: a login with an API token, the world map (regions, hosts, machines
// per region, arcs from the edge region where requests enter to the region
// that serves them), an app page (machines and their actions, releases,
// autoscaler decisions, certificates, live logs), and usage against the
// budget. Pages are drawn on the server (html/template, the map as SVG);
// the browser gets htmx and its SSE extension, vendored under assets/ with
// their licences, and nothing from elsewhere.
//
// Every read and action goes through the server's own API handler, in
// process, with the session's token (handlerTransport), so the dashboard
// sees and does exactly what that token may through /v1. Live updates are
// server-sent events: a hub watches the store's buckets and tells each open
// page which app changed; the page then fetches its panels again.
//
// Only internal/server imports it (and cmd wiring through the server).
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/autoscale"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/store"
)

//go:embed assets
var assets embed.FS

// DefaultSessionTTL is how long a login lasts.
const DefaultSessionTTL = 12 * time.Hour

// Config is what the dashboard needs from the control plane.
type Config struct {
	// API is the server's handler for /v1: every read and action of the
	// dashboard is a request to it carrying the session's token.
	API http.Handler
	// Store is watched for changes (live updates) and read for hosts
	// (up/down per region, the mesh's round trips).
	Store *store.Store
	// Budgets is billing's bucket, watched so the usage panel follows a
	// suspension; nil leaves it out.
	Budgets jetstream.KeyValue
	World   *geo.World
	// Demand is the edges' latest report per origin region for an app (the
	// autoscaler's); nil draws no arcs.
	Demand func(app string) map[string]autoscale.Demand
	// Secret seals session cookies (at least 16 bytes; the server keeps
	// it in its data dir, so sessions survive a restart).
	Secret     []byte
	SessionTTL time.Duration
	Log        *slog.Logger
	// Now is the clock sessions expire by (time.Now if nil).
	Now func() time.Time
}

// UI is the dashboard's handler; mount it at /ui/.
type UI struct {
	cfg  Config
	log  *slog.Logger
	seal *sealer
	tpl  *template.Template
	mux  *http.ServeMux
	hub  *hub
	now  func() time.Time
	land string // the world outline's SVG path
	// closing ends the streams when Run's context ends (a server that
	// shuts down does not wait for open pages).
	closing chan struct{}
	revoked *revoked // session.go
}

// New builds the dashboard. Run must run for live updates.
func New(cfg Config) (*UI, error) {
	if cfg.API == nil || cfg.Store == nil {
		return nil, errors.New("ui: the API handler and the store are required")
	}
	if cfg.World == nil {
		cfg.World = geo.Default()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	seal, err := newSealer(cfg.Secret)
	if err != nil {
		return nil, err
	}
	tpl, err := template.New("").Funcs(funcs).ParseFS(assets, "assets/*.html")
	if err != nil {
		return nil, fmt.Errorf("ui: templates: %w", err)
	}
	land, err := assets.ReadFile("assets/land-110m.path")
	if err != nil {
		return nil, fmt.Errorf("ui: world outline: %w", err)
	}
	u := &UI{cfg: cfg, log: cfg.Log, seal: seal, tpl: tpl, hub: newHub(), now: cfg.Now, closing: make(chan struct{}), land: strings.TrimSpace(string(land))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if u.revoked, err = openRevoked(ctx, cfg.Store, cfg.SessionTTL); err != nil {
		return nil, err
	}
	u.routes()
	return u, nil
}

func (u *UI) routes() {
	m := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", staticFiles(static)))
	m.HandleFunc("GET /ui/static/land.svg", u.landSVG)
	m.HandleFunc("GET /ui/login", u.loginPage)
	m.HandleFunc("POST /ui/login", u.login)
	m.HandleFunc("POST /ui/logout", u.authed(u.logout))
	m.HandleFunc("GET /ui/{$}", u.authed(u.dashboard))
	m.HandleFunc("GET /ui/map", u.authed(u.mapPanel))
	m.HandleFunc("GET /ui/apps", u.authed(u.appsPanel))
	m.HandleFunc("GET /ui/events", u.authed(u.events))
	m.HandleFunc("GET /ui/apps/{app}", u.authed(u.appPage))
	m.HandleFunc("GET /ui/apps/{app}/machines", u.authed(u.machinesPanel))
	m.HandleFunc("GET /ui/apps/{app}/details", u.authed(u.detailsPanel))
	m.HandleFunc("GET /ui/apps/{app}/logs", u.authed(u.logStream))
	m.HandleFunc("GET /ui/apps/{app}/logpanel", u.authed(u.logPanel))
	m.HandleFunc("POST /ui/apps/{app}/machines/{id}/{action}", u.authed(u.machineAction))
	m.HandleFunc("/ui/", u.authed(func(w http.ResponseWriter, r *http.Request, _ *session, _ *api.Client) {
		u.errorPage(w, r, http.StatusNotFound, "There is no page "+r.URL.Path+" in the dashboard.")
	}))
	u.mux = m
}

// ServeHTTP serves /ui/ and below.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Nothing but this server: no font, map tile or script from elsewhere.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	u.mux.ServeHTTP(w, r)
}

// Run feeds live updates from the store's watches until ctx ends.
func (u *UI) Run(ctx context.Context) {
	defer close(u.closing)
	st := u.cfg.Store
	kvs := []jetstream.KeyValue{st.Apps, st.Machines, st.Status, st.Releases, st.Autoscale, st.Certs, st.Hosts}
	if u.cfg.Budgets != nil {
		kvs = append(kvs, u.cfg.Budgets)
	}
	done := make(chan struct{})
	for _, kv := range kvs {
		go func() {
			defer func() { done <- struct{}{} }()
			global := kv == st.Hosts || kv == u.cfg.Budgets
			st.Watch(ctx, kv, u.log, func(c store.Change) {
				switch {
				case c.All != nil, global:
					u.hub.publish("*")
				default:
					app, _, _ := strings.Cut(c.Key, ".")
					u.hub.publish(app)
				}
			})
		}()
	}
	for range kvs {
		<-done
	}
}

// landSVG is the world's land as an image the map refers to, so that a
// map refreshed on every change does not carry the outline each time.
func (u *UI) landSVG(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "max-age=3600")
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 360 180" width="360" height="180"><path fill="#cfd8e3" stroke="#b9c4d0" stroke-width="0.15" d="%s"/></svg>`, u.land)
}

// staticFiles serves the embedded assets with a short cache life (they
// change with the binary).
func staticFiles(fsys fs.FS) http.Handler {
	fh := http.FileServerFS(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, ".html") || strings.HasSuffix(r.URL.Path, ".path") || r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "max-age=300")
		fh.ServeHTTP(w, r)
	})
}

// client is an API client acting with tok, through the server's handler.
func (u *UI) client(tok string) *api.Client {
	c := api.NewClient("http://perch-ui.internal", tok)
	c.HTTP = &http.Client{Transport: handlerTransport{u.cfg.API}}
	return c
}

// authed runs h with the request's session and a client acting with its
// token; without a (valid) session, a page goes to the login form and a
// fragment or stream says 401. Every POST must carry the session's CSRF
// token (form field csrf or header X-CSRF-Token), else 403.
func (u *UI) authed(h func(http.ResponseWriter, *http.Request, *session, *api.Client)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess, err := u.sessionOf(r)
		if errors.Is(err, errSessionUnchecked) {
			u.log.Warn("dashboard session not checked", "err", err)
			u.errorPage(w, r, http.StatusServiceUnavailable, "The dashboard cannot reach its store just now ("+err.Error()+"); try again in a moment.")
			return
		}
		if err != nil {
			if _, had := r.Cookie(sessionCookie); had == nil {
				setCookie(w, r, sessionCookie, "", -1)
			}
			if r.Method == http.MethodGet && r.Header.Get("HX-Request") == "" && r.Header.Get("Accept") != "text/event-stream" {
				http.Redirect(w, r, "/ui/login?why="+urlQuery(err.Error()), http.StatusSeeOther)
				return
			}
			w.Header().Set("HX-Redirect", "/ui/login")
			u.errorPage(w, r, http.StatusUnauthorized, "You are not logged in ("+err.Error()+"): log in again.")
			return
		}
		if r.Method == http.MethodPost && !checkCSRF(r, sess.CSRF) {
			u.errorPage(w, r, http.StatusForbidden, "This action was refused: it did not carry this session's CSRF token. Reload the page and try again.")
			return
		}
		h(w, r, sess, u.client(sess.Token))
	}
}
