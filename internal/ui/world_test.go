package ui_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/server"
	"github.com/perchhq/perch/internal/store"
)

// testWorld is a real control plane in process (embedded NATS, the API,
// the dashboard), with hosts registered through the API. No agent runs:
// the test writes what a host would report (statuses, log lines) through
// the store, as internal/server's own tests do.
type testWorld struct {
	t      *testing.T
	srv    *server.Server
	admin  *api.Client
	orgTok string // the "personal" organisation's token
	hosts  map[string]string
}

func startWorld(t *testing.T, regions ...string) *testWorld {
	t.Helper()
	s, _ := startServer(t, t.TempDir())
	ctx := context.Background()
	w := &testWorld{t: t, srv: s, admin: api.NewClient(s.URL(), s.AdminToken()), hosts: map[string]string{}}
	tok, err := w.admin.CreateToken(ctx, server.DefaultOrg, api.CreateTokenRequest{Kind: "org", Name: "ui-test"})
	if err != nil {
		t.Fatal(err)
	}
	w.orgTok = tok.Secret
	for _, r := range regions {
		h, err := w.admin.RegisterHost(ctx, api.Host{Region: r, CPUs: 8, MemoryMB: 16384, Address: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		w.hosts[r] = h.ID
	}
	return w
}

// startServer runs a control plane on dataDir until the test ends, or
// until stop (which waits for it to close).
func startServer(t *testing.T, dataDir string) (s *server.Server, stop func()) {
	t.Helper()
	// Goroutines of a cancelled request (an in-process log follow waits
	// out its fetch) may log after the test: those lines are dropped.
	tl := &testLog{t: t}
	t.Cleanup(func() { tl.done.Store(true) })
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, server.Config{Listen: "127.0.0.1:0", DataDir: dataDir, NATSListen: "127.0.0.1:0", HostTimeout: time.Hour,
		Log: slog.New(slog.NewTextHandler(tl, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; s.Close() }) }
	t.Cleanup(stop)
	return s, stop
}

type testLog struct {
	t    *testing.T
	done atomic.Bool
}

func (l *testLog) Write(p []byte) (int, error) {
	if !l.done.Load() {
		l.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// orgClient is the API as the organisation's token sees it.
func (w *testWorld) orgClient() *api.Client { return api.NewClient(w.srv.URL(), w.orgTok) }

// machine creates a machine of app in region and reports it as state.
func (w *testWorld) machine(app, region, state string) api.Machine {
	w.t.Helper()
	ctx := context.Background()
	m, err := w.orgClient().CreateMachine(ctx, app, api.CreateMachineRequest{Region: region, Config: api.MachineConfig{Image: "registry.example/hello:1",
		Metadata: map[string]string{"perch_release": "v1"}}})
	if err != nil {
		w.t.Fatal(err)
	}
	w.report(app, m.ID, state)
	return *m
}

// report writes the host's observed state of a machine for its current
// spec, as the machine's agent would.
func (w *testWorld) report(app, id, state string) {
	w.t.Helper()
	ctx := context.Background()
	sp, _, err := store.Get[store.MachineSpec](ctx, w.srv.Store().Machines, store.MachineKey(app, id))
	if err != nil {
		w.t.Fatal(err)
	}
	st := store.MachineStatus{ID: id, App: app, HostID: sp.HostID, State: state, Generation: sp.Generation, Ready: state == api.StateStarted}
	if _, err := store.Put(ctx, w.srv.Store().Status, store.MachineKey(app, id), st); err != nil {
		w.t.Fatal(err)
	}
}

// actAsHosts reports every spec's desired state as reached, as the
// agents would once done, until the test ends.
func (w *testWorld) actAsHosts() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	w.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		w.srv.Store().Watch(ctx, w.srv.Store().Machines, nil, func(c store.Change) {
			apply := func(val []byte) {
				var sp store.MachineSpec
				if json.Unmarshal(val, &sp) != nil || sp.Desired == "" {
					return
				}
				st := store.MachineStatus{ID: sp.ID, App: sp.App, HostID: sp.HostID, State: sp.Desired, Generation: sp.Generation, Ready: sp.Desired == api.StateStarted}
				_, _ = store.Put(ctx, w.srv.Store().Status, store.MachineKey(sp.App, sp.ID), st)
			}
			for _, v := range c.All {
				apply(v)
			}
			if c.Value != nil && !c.Deleted {
				apply(c.Value)
			}
		})
	}()
}

// logLine publishes a line of a machine's output as the log shipper does.
func (w *testWorld) logLine(app, region, id, msg string) {
	w.t.Helper()
	l := api.LogLine{Timestamp: time.Now().UTC(), App: app, Region: region, MachineID: id, Stream: "stdout", Message: msg}
	b, _ := json.Marshal(l)
	if _, err := w.srv.Store().JetStream().Publish(context.Background(), store.LogSubject(app, region, id), b); err != nil {
		w.t.Fatal(err)
	}
}

// browser is a cookie-keeping HTTP client that does not follow redirects.
func browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}
