package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// flyCall sends a request as Fly's flaps client does (JSON body, bearer
// token, optional lease nonce) and returns the status and body.
func flyCall(t *testing.T, s *testServer, method, path string, in any, nonce string) (int, []byte) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.URL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+s.AdminToken())
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if nonce != "" {
		req.Header.Set("fly-machine-lease-nonce", nonce)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// flyDecode decodes b into out as fly-go does (encoding/json, unknown
// fields ignored) and fails the test on any error.
func flyDecode(t *testing.T, what string, b []byte, out any) {
	t.Helper()
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: Fly's types cannot decode %s: %v", what, b, err)
	}
}

// flyOK calls and decodes a 2xx answer into out (when not nil).
func flyOK(t *testing.T, s *testServer, method, path string, in any, nonce string, out any) {
	t.Helper()
	code, b := flyCall(t, s, method, path, in, nonce)
	if code/100 != 2 {
		t.Fatalf("%s %s: HTTP %d %s", method, path, code, b)
	}
	if out != nil {
		flyDecode(t, method+" "+path, b, out)
	}
}

// flyRefused calls and checks a refusal: its code, a Fly error body
// whose status is wantStatus, and a message that says contains.
func flyRefused(t *testing.T, s *testServer, method, path string, in any, nonce string, code int, wantStatus, contains string) {
	t.Helper()
	got, b := flyCall(t, s, method, path, in, nonce)
	var e flyErrorResponse
	flyDecode(t, method+" "+path+" error", b, &e)
	if got != code || e.StatusCode != wantStatus || !strings.Contains(e.Error, contains) {
		t.Fatalf("%s %s: HTTP %d %+v; want %d, status %q, error mentioning %q", method, path, got, e, code, wantStatus, contains)
	}
}

// fakeHost plays a machine host against the store: it reports each
// spec's desired state for its generation, with the instance id the
// spec names, an image ref by digest and events as an agent writes them,
// records signals, and removes destroyed machines.
type fakeHost struct {
	mu      sync.Mutex
	signals map[string][]string // machine id → signals sent
}

func startFakeHost(t *testing.T, s *testServer) *fakeHost {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := s.Store().Machines.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fh := &fakeHost{signals: map[string][]string{}}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		defer w.Stop()
		sent := map[string]int64{}
		for {
			select {
			case <-ctx.Done():
				return
			case e := <-w.Updates():
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				var sp store.MachineSpec
				if json.Unmarshal(e.Value(), &sp) != nil {
					continue
				}
				fh.act(ctx, s, sp, sent)
			}
		}
	}()
	return fh
}

func (fh *fakeHost) act(ctx context.Context, s *testServer, sp store.MachineSpec, sent map[string]int64) {
	key := sp.Key()
	if sp.Desired == store.DesireDestroyed {
		_ = store.Delete(ctx, s.Store().Machines, key)
		_ = store.Delete(ctx, s.Store().Status, key)
		return
	}
	st, _, _ := store.Get[store.MachineStatus](ctx, s.Store().Status, key)
	if sp.SignalSeq > sent[sp.ID] {
		sent[sp.ID] = sp.SignalSeq
		fh.mu.Lock()
		fh.signals[sp.ID] = append(fh.signals[sp.ID], sp.Signal)
		fh.mu.Unlock()
	}
	state := map[string]string{store.DesireStarted: api.StateStarted, store.DesireStopped: api.StateStopped, store.DesireSuspended: api.StateSuspended}[sp.Desired]
	if st.Generation == sp.Generation && st.State == state {
		return
	}
	now := time.Now().UTC()
	st = store.MachineStatus{ID: sp.ID, App: sp.App, HostID: sp.HostID, State: state, Generation: sp.Generation,
		InstanceID: sp.InstanceID, ImageRef: "registry.example.com/acme/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Events: st.Events, UpdatedAt: now}
	ev := api.Event{Type: "start", Status: state, Source: "host", Timestamp: now.UnixMilli()}
	if state == api.StateStopped {
		ev.Type, ev.ExitCode = "exit", ptr(0)
	}
	st.AddEvent(ev)
	_, _ = store.Put(ctx, s.Store().Status, key, st)
}

func (fh *fakeHost) sent(id string) []string {
	fh.mu.Lock()
	defer fh.mu.Unlock()
	return append([]string(nil), fh.signals[id]...)
}

func ptr[T any](v T) *T { return &v }

// TestFlyClientLifecycle drives a machine's whole life with the request
// bodies Fly's Go client (fly-go) sends, and decodes every answer into
// fly-go's own types (flytypes_test.go): create app, create machine
// (no region), lease, update refused without the nonce and accepted with
// it, wait on several states with the instance id, restart, signal,
// cordon, metadata, events, stop with the app's kill signal, destroy with
// kill=true.
func TestFlyClientLifecycle(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096}); err != nil {
		t.Fatal(err)
	}
	fh := startFakeHost(t, s)

	var app flyApp
	flyOK(t, s, "POST", "/v1/apps", flyCreateAppRequest{Name: "flyweb", Org: "acme"}, "", &app)
	if app.ID == "" || app.Name != "flyweb" || app.Organization.Slug != "acme" {
		t.Errorf("created app: %+v; want an id, name flyweb and organization acme", app)
	}
	var apps struct {
		TotalApps int      `json:"total_apps"`
		Apps      []flyApp `json:"apps"`
	}
	flyOK(t, s, "GET", "/v1/apps?org_slug=acme", nil, "", &apps)
	if apps.TotalApps != 1 || len(apps.Apps) != 1 || apps.Apps[0].Name != "flyweb" {
		t.Errorf("GET /v1/apps?org_slug=acme: %+v; want flyweb alone", apps)
	}
	flyOK(t, s, "GET", "/v1/apps?org_slug=other", nil, "", &apps)
	if apps.TotalApps != 0 {
		t.Errorf("GET /v1/apps?org_slug=other: %+v; want none", apps)
	}

	// The body of Fly's docs' "create a machine", as fly-go marshals it.
	launch := flyLaunchMachineInput{Name: "flyweb-1", Config: &flyMachineConfig{
		Image: "registry.example.com/acme/web:v1",
		Env:   map[string]string{"APP_ENV": "production"},
		Guest: &flyMachineGuest{CPUKind: "shared", CPUs: 1, MemoryMB: 256},
		Services: []flyMachineService{{Protocol: "tcp", InternalPort: 8080,
			Ports: []flyMachinePort{{Port: ptr(443), Handlers: []string{"tls", "http"}}, {Port: ptr(80), Handlers: []string{"http"}, ForceHTTPS: true}},
			Checks: []flyMachineServiceCheck{{Type: ptr("http"), Port: ptr(8080), Interval: &flyDuration{15 * time.Second}, Timeout: &flyDuration{2 * time.Second},
				HTTPMethod: ptr("GET"), HTTPPath: ptr("/health"), HTTPHeaders: []flyMachineHTTPHeader{{Name: "X-Check", Values: []string{"1"}}}}},
			Concurrency: &flyServiceConcurrency{Type: "requests", SoftLimit: 20, HardLimit: 25}}},
		Init:       flyMachineInit{Exec: []string{"/web", "--port", "8080"}},
		Restart:    &flyMachineRestart{Policy: "always"},
		StopConfig: &flyStopConfig{Signal: ptr("SIGINT"), Timeout: &flyDuration{30 * time.Second}},
		Metadata:   map[string]string{"fly_process_group": "app"},
	}}
	var m flyMachine
	flyOK(t, s, "POST", "/v1/apps/flyweb/machines", launch, "", &m)
	if m.Name != "flyweb-1" || m.Region != "iad" || m.InstanceID == "" || m.Config == nil {
		t.Fatalf("created machine: %+v; want flyweb-1 in iad (the only region with room) with an instance id", m)
	}
	if h := m.Config.Services[0].Checks[0].HTTPHeaders; len(h) != 1 || h[0].Name != "X-Check" || h[0].Values[0] != "1" {
		t.Errorf("check headers came back as %+v", h)
	}
	if got := m.Config.Init.Entrypoint; strings.Join(got, " ") != "/web --port 8080" {
		t.Errorf("init.exec became entrypoint %q; want the whole command line", got)
	}
	if sc := m.Config.StopConfig; sc == nil || *sc.Signal != "SIGINT" || sc.Timeout.Duration != 30*time.Second {
		t.Errorf("stop_config came back as %+v", sc)
	}
	mp := "/v1/apps/flyweb/machines/" + m.ID
	flyOK(t, s, "GET", mp+"/wait?"+url.Values{"state": {"started", "stopped"}, "instance_id": {m.InstanceID}, "timeout": {"10"}}.Encode(), nil, "", nil)

	flyOK(t, s, "GET", mp, nil, "", &m)
	ir := m.ImageRef
	if m.State != "started" || ir.Registry != "registry.example.com" || ir.Repository != "acme/web" || ir.Tag != "v1" || !strings.HasPrefix(ir.Digest, "sha256:") {
		t.Errorf("machine %s, image_ref %+v; want started, registry.example.com acme/web v1 by digest", m.State, ir)
	}
	if n := len(m.Events); n == 0 || time.Since(m.Events[0].Time()) > time.Minute || m.Events[0].Time().After(time.Now().Add(time.Second)) {
		t.Errorf("events %+v: want the latest first with a Unix-milliseconds timestamp of now", m.Events)
	}

	// Lease: one holder; changes need its nonce.
	var lease flyMachineLease
	flyOK(t, s, "POST", mp+"/lease?ttl=60", nil, "", &lease)
	if lease.Status != "success" || lease.Data == nil || lease.Data.Nonce == "" || lease.Data.ExpiresAt < time.Now().Add(50*time.Second).Unix() {
		t.Fatalf("lease: %+v", lease)
	}
	nonce := lease.Data.Nonce
	var held flyMachineLease
	flyOK(t, s, "GET", mp+"/lease", nil, "", &held)
	if held.Data == nil || held.Data.Nonce != nonce || held.Data.Owner != "admin" {
		t.Errorf("GET lease: %+v; want nonce %s owned by admin", held, nonce)
	}
	launch.Config.Env["APP_ENV"] = "staging"
	flyRefused(t, s, "POST", mp, launch, "", 412, "failed_precondition", "leased by admin")
	flyRefused(t, s, "POST", mp, launch, "not-the-nonce", 412, "failed_precondition", "does not carry that lease's nonce")
	var updated flyMachine
	flyOK(t, s, "POST", mp, launch, nonce, &updated)
	if updated.InstanceID == m.InstanceID || updated.Config.Env["APP_ENV"] != "staging" {
		t.Errorf("update: instance %s (was %s), env %v; want a new instance with the new env", updated.InstanceID, m.InstanceID, updated.Config.Env)
	}
	flyOK(t, s, "GET", mp+"/wait?state=started&instance_id="+updated.InstanceID+"&timeout=10", nil, "", nil)

	// Restart: a new instance, stopped with the request's signal.
	flyRefused(t, s, "POST", mp+"/restart?force_stop=false&timeout=5s&signal=SIGTERM", nil, "", 412, "failed_precondition", "leased")
	flyOK(t, s, "POST", mp+"/restart?force_stop=false&timeout=5s&signal=SIGTERM", nil, nonce, nil)
	var restarted flyMachine
	flyOK(t, s, "GET", mp, nil, "", &restarted)
	if restarted.InstanceID == updated.InstanceID {
		t.Errorf("restart kept instance %s; want a new one", restarted.InstanceID)
	}
	flyOK(t, s, "GET", mp+"/wait?state=started&instance_id="+restarted.InstanceID+"&timeout=10", nil, "", nil)
	sp, _, err := store.Get[store.MachineSpec](ctx, s.Store().Machines, store.MachineKey("flyweb", m.ID))
	if err != nil || sp.StopSignal != "SIGTERM" || sp.StopTimeout != 5*time.Second {
		t.Errorf("restart reached the host as %q %s (%v); want SIGTERM 5s", sp.StopSignal, sp.StopTimeout, err)
	}
	// The restart's signal was for the restart: the next change stops the
	// machine as its stop_config (the app's kill_signal) says.
	flyOK(t, s, "POST", mp, launch, nonce, &updated)
	sp, _, _ = store.Get[store.MachineSpec](ctx, s.Store().Machines, store.MachineKey("flyweb", m.ID))
	if sp.StopSignal != "" || sp.StopTimeout != 0 || sp.Config.StopConfig == nil || sp.Config.StopConfig.Signal != "SIGINT" {
		t.Errorf("after the restart an update stops with %q %s, stop_config %+v; want the stop_config's SIGINT", sp.StopSignal, sp.StopTimeout, sp.Config.StopConfig)
	}
	flyOK(t, s, "GET", mp+"/wait?state=started&instance_id="+updated.InstanceID+"&timeout=10", nil, "", nil)

	// Signal: by name, and as fly-go's Kill sends it (a number).
	flyOK(t, s, "POST", mp+"/signal", map[string]any{"signal": "SIGHUP"}, nonce, nil)
	flyOK(t, s, "POST", mp+"/signal", map[string]any{"signal": 10}, nonce, nil)
	waitFor(t, "the host to see both signals", func() bool { return strings.Join(fh.sent(m.ID), ",") == "SIGHUP,SIGUSR1" })

	// Cordon and uncordon.
	flyOK(t, s, "POST", mp+"/cordon", nil, nonce, nil)
	flyOK(t, s, "GET", mp, nil, "", &m)
	if !m.Cordoned {
		t.Error("cordoned machine shows cordoned false")
	}
	flyOK(t, s, "POST", mp+"/uncordon", nil, nonce, nil)

	// Metadata, and listing by it.
	flyOK(t, s, "POST", mp+"/metadata/role", map[string]any{"value": "primary"}, nonce, nil)
	var md map[string]string
	flyOK(t, s, "GET", mp+"/metadata", nil, "", &md)
	if md["role"] != "primary" || md["fly_process_group"] != "app" {
		t.Errorf("metadata: %v", md)
	}
	var list []flyMachine
	flyOK(t, s, "GET", "/v1/apps/flyweb/machines?metadata.role=primary&region=iad", nil, "", &list)
	if len(list) != 1 {
		t.Errorf("machines with role=primary: %d, want 1", len(list))
	}
	flyOK(t, s, "GET", "/v1/apps/flyweb/machines?metadata.role=replica&include_deleted=true", nil, "", &list)
	if len(list) != 0 {
		t.Errorf("machines with role=replica: %d, want 0", len(list))
	}
	flyOK(t, s, "DELETE", mp+"/metadata/role", nil, nonce, nil)

	var events []flyMachineEvent
	flyOK(t, s, "GET", mp+"/events", nil, "", &events)
	if len(events) < 3 {
		t.Errorf("events: %d, want one per start at least", len(events))
	}
	for i := 1; i < len(events); i++ {
		if events[i].Timestamp > events[i-1].Timestamp {
			t.Errorf("events not the latest first: %+v", events)
			break
		}
	}

	flyOK(t, s, "DELETE", mp+"/lease", nil, nonce, nil)
	flyRefused(t, s, "GET", mp+"/lease", nil, "", 404, "not_found", "has no lease")

	// Stop as fly-go sends it; the host stops it with that signal.
	flyOK(t, s, "POST", mp+"/stop", flyStopMachineInput{ID: m.ID, Signal: "SIGINT", Timeout: flyDuration{30 * time.Second}}, "", nil)
	sp, _, err = store.Get[store.MachineSpec](ctx, s.Store().Machines, store.MachineKey("flyweb", m.ID))
	if err != nil || sp.StopSignal != "SIGINT" || sp.StopTimeout != 30*time.Second {
		t.Errorf("stop reached the host as %q %s (%v); want SIGINT 30s", sp.StopSignal, sp.StopTimeout, err)
	}
	flyOK(t, s, "GET", mp+"/wait?state=stopped&timeout=10", nil, "", nil)
	flyOK(t, s, "GET", mp, nil, "", &m)
	if e := m.Events[0]; e.Type != "exit" || e.Request == nil || e.Request.ExitEvent == nil || e.Request.ExitEvent.ExitedAt.IsZero() {
		t.Errorf("latest event after a stop: %+v; want the exit with request.exit_event", e)
	}
	var start flyMachineStartResponse
	flyOK(t, s, "POST", mp+"/start", nil, "", &start)
	if start.PreviousState != "stopped" {
		t.Errorf("start: %+v; want previous_state stopped", start)
	}
	flyOK(t, s, "GET", mp+"/wait?state=started&timeout=10", nil, "", nil)
	flyRefused(t, s, "DELETE", mp, nil, "", 412, "failed_precondition", "kill=true")
	flyOK(t, s, "DELETE", mp+"?kill=true", nil, "", nil)
	flyOK(t, s, "GET", mp+"/wait?state=destroyed&timeout=10", nil, "", nil)
	flyRefused(t, s, "GET", mp, nil, "", 404, "not_found", "not found")

	var regions []map[string]any
	flyOK(t, s, "GET", "/v1/platform/regions", nil, "", &regions)
	if len(regions) == 0 {
		t.Error("GET /v1/platform/regions listed no region")
	}
}

// waitFor polls cond until it holds, failing after 10 s (waitUntil).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, 10*time.Second, what, func() string {
		if cond() {
			return ""
		}
		return "not yet"
	})
}

func (e flyMachineEvent) Time() time.Time {
	return time.Unix(e.Timestamp/1000, e.Timestamp%1000*1000000)
}

// TestAutoDestroy: a machine created with Fly's auto_destroy is
// destroyed once its process ends and it is not restarted; one without
// it stays, stopped.
func TestAutoDestroy(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096}); err != nil {
		t.Fatal(err)
	}
	startFakeHost(t, s)
	flyOK(t, s, "POST", "/v1/apps", flyCreateAppRequest{Name: "jobs", Org: "personal"}, "", nil)
	launch := func(autoDestroy bool) flyMachine {
		var m flyMachine
		flyOK(t, s, "POST", "/v1/apps/jobs/machines", flyLaunchMachineInput{Config: &flyMachineConfig{
			Image: "registry.example.com/acme/job:v1", AutoDestroy: autoDestroy, Restart: &flyMachineRestart{Policy: "no"}}}, "", &m)
		flyOK(t, s, "GET", "/v1/apps/jobs/machines/"+m.ID+"/wait?state=started&timeout=10", nil, "", nil)
		return m
	}
	keep, once := launch(false), launch(true)
	// Each process exits on its own: its host reports it stopped.
	for _, m := range []flyMachine{keep, once} {
		key := store.MachineKey("jobs", m.ID)
		st, _, err := store.Get[store.MachineStatus](ctx, s.Store().Status, key)
		if err != nil {
			t.Fatal(err)
		}
		st.State, st.ExitCode = api.StateStopped, ptr(0)
		if _, err := store.Put(ctx, s.Store().Status, key, st); err != nil {
			t.Fatal(err)
		}
	}
	flyOK(t, s, "GET", "/v1/apps/jobs/machines/"+once.ID+"/wait?state=destroyed&timeout=10", nil, "", nil)
	waitFor(t, "the auto_destroy machine to be gone", func() bool {
		_, err := s.c.GetMachine(ctx, "jobs", once.ID)
		return api.IsNotFound(err)
	})
	got, err := s.c.GetMachine(ctx, "jobs", keep.ID)
	if err != nil || got.State != api.StateStopped {
		t.Errorf("the machine without auto_destroy: %+v, %v; want it kept, stopped", got, err)
	}
}
