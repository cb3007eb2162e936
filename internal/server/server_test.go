package server

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

type testServer struct {
	*Server
	c    *api.Client
	stop func()
}

func startServer(t *testing.T, dir string, mut ...func(*Config)) *testServer {
	t.Helper()
	cfg := Config{Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "127.0.0.1:0", HostTimeout: time.Hour,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	for _, m := range mut {
		m(&cfg)
	}
	ts, err := runServer(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// runServer is startServer with its Config made and its error returned
// (from any goroutine): the servers of a cluster start together.
func runServer(t *testing.T, cfg Config) (*testServer, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ctx) }()
	ts := &testServer{Server: s, c: api.NewClient(s.URL(), s.AdminToken())}
	stopped := false
	ts.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			s.Close()
		}
	}
	t.Cleanup(ts.stop)
	return ts, nil
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func wantStatus(t *testing.T, err error, code int, contains string) {
	t.Helper()
	var he *api.HTTPError
	if !errors.As(err, &he) || he.StatusCode != code {
		t.Fatalf("want HTTP %d, got %v", code, err)
	}
	if !strings.Contains(he.Message, contains) {
		t.Errorf("error %q does not mention %q", he.Message, contains)
	}
}

func TestTokensRequired(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, tok := range []string{"", "perch_nope"} {
		_, err := api.NewClient(s.URL(), tok).ListApps(ctx)
		wantStatus(t, err, 401, "token")
	}
	if _, err := s.c.ListApps(ctx); err != nil {
		t.Fatalf("admin token refused: %v", err)
	}
	if !strings.HasPrefix(s.TokenPath(), s.cfg.DataDir) {
		t.Errorf("token written outside the data dir: %s", s.TokenPath())
	}
}

func TestAppsAndMachinesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	_, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	wantStatus(t, err, 409, "already taken")
	_, err = s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "Bad_Name"})
	wantStatus(t, err, 400, "not valid")

	h, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	sub := netip.MustParsePrefix(h.Subnet)
	m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/web:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.State != api.StateCreated || m.HostID != h.ID || !sub.Contains(netip.MustParseAddr(m.PrivateIP)) || m.Config.Restart.Policy != api.RestartOnFailure {
		t.Errorf("machine: %+v", m)
	}
	token := s.AdminToken()
	s.stop()

	s2 := startServer(t, dir)
	if s2.AdminToken() != token {
		t.Errorf("admin token changed across restart")
	}
	got, err := s2.c.GetMachine(ctx, "web", m.ID)
	if err != nil || got.PrivateIP != m.PrivateIP {
		t.Fatalf("machine after restart: %+v %v", got, err)
	}
	h2, err := s2.c.RegisterHost(ctx, api.Host{ID: h.ID, Region: "iad", CPUs: 2, MemoryMB: 1024})
	if err != nil || h2.Subnet != h.Subnet {
		t.Errorf("host re-registered with another subnet: %v %v", h2, err)
	}
}

func TestMachineValidationAndPlacementErrors(t *testing.T) {
	minusOne := -1
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	for _, tc := range []struct {
		req      api.CreateMachineRequest
		code     int
		contains string
	}{
		{api.CreateMachineRequest{Region: "xyz", Config: api.MachineConfig{Image: "i"}}, 400, `unknown region "xyz"`},
		{api.CreateMachineRequest{Region: "iad"}, 400, "config.image is required"},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Services: []api.Service{{InternalPort: 0}}}}, 400, "internal_port must be 1-65535, got 0"},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Restart: api.Restart{Policy: "sometimes"}}}, 400, "restart.policy"},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Services: []api.Service{{InternalPort: 80, Checks: []api.Check{{Type: "http", Path: "health"}}}}}}, 400, `config.services[0].checks[0]: path "health" must start with /`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Services: []api.Service{{InternalPort: 80, Autostop: "stop", MinMachinesRunning: &minusOne}}}}, 400, "config.services[0].min_machines_running must be 0 or more, got -1"},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Services: []api.Service{{InternalPort: 80, Autostop: "stop", IdleTimeout: "-5s"}}}}, 400, `config.services[0].idle_timeout "-5s" must be a positive duration`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Services: []api.Service{{InternalPort: 80, Autostop: "sometimes"}}}}, 400, `config.services[0].autostop "sometimes" is not valid`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 4096}, Services: []api.Service{{InternalPort: 80, Autostop: "suspend"}}}}, 400, `autostop "suspend" needs at most 2048 MB of memory`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Statics: []api.Static{{GuestPath: "/app/public", URLPrefix: "/", TigrisBucket: "assets"}}}}, 400, `config.statics[0]: tigris_bucket "assets": statics from a bucket are not supported`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Statics: []api.Static{{GuestPath: "/app/../../etc", URLPrefix: "/"}}}}, 400, `config.statics[0]: guest_path "/app/../../etc" must be an absolute directory inside the image`},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Statics: []api.Static{{GuestPath: "/a", URLPrefix: "/s"}, {GuestPath: "/b", URLPrefix: "/s"}}}}, 400, `config.statics[1]: url_prefix "/s" is used twice`},
		{api.CreateMachineRequest{Region: "sin", Config: api.MachineConfig{Image: "i"}}, 422, "no host in region sin"},
		{api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 4096}}}, 422, "4096 MB"},
	} {
		_, err := s.c.CreateMachine(ctx, "web", tc.req)
		wantStatus(t, err, tc.code, tc.contains)
	}
	_, err := s.c.CreateMachine(ctx, "nope", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	wantStatus(t, err, 404, `app "nope" not found`)
	ms, _ := s.c.ListMachines(ctx, "web", "")
	if len(ms) != 0 {
		t.Errorf("failed creates left %d machines", len(ms))
	}
}

func TestWaitFollowsTheHostsReports(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	if err != nil {
		t.Fatal(err)
	}
	// No host acts: the wait times out and says the state.
	err = s.c.WaitMachine(ctx, "web", m.ID, api.StateStarted, time.Second)
	wantStatus(t, err, 408, "created")

	// The host reports failure while a client waits.
	errc := make(chan error, 1)
	go func() { errc <- s.c.WaitMachine(ctx, "web", m.ID, api.StateStarted, 30*time.Second) }()
	code := 3
	st := store.MachineStatus{ID: m.ID, App: "web", State: api.StateFailed, Generation: 1, ExitCode: &code, LastLogs: []string{"boom"}}
	if _, err := store.Put(ctx, s.Store().Status, store.MachineKey("web", m.ID), st); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, <-errc, 409, "exit code 3")

	st.State = api.StateStarted
	store.Put(ctx, s.Store().Status, store.MachineKey("web", m.ID), st)
	if err := s.c.WaitMachine(ctx, "web", m.ID, api.StateStarted, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// A started machine is not destroyed without force.
	wantStatus(t, s.c.DestroyMachine(ctx, "web", m.ID, false), 412, "stop it first")
}

func TestSilentHostIsMarkedDown(t *testing.T) {
	s := startServer(t, t.TempDir(), func(c *Config) { c.HostTimeout = 500 * time.Millisecond })
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.c.GetMachine(ctx, "web", m.ID)
		if err == nil && got.HostStatus == api.HostUnreachable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine's host never shown unreachable: %+v %v", got, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err = s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	wantStatus(t, err, 422, "is down")
}
