package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// rawCall sends body as is.
func rawCall(t *testing.T, s *testServer, method, path, body string) (int, flyErrorResponse) {
	t.Helper()
	resp := apiRequest(t, s, method, path, strings.NewReader(body))
	var e flyErrorResponse
	_ = json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e
}

func machineCount(t *testing.T, s *testServer, app string) int {
	t.Helper()
	specs, err := store.List[store.MachineSpec](context.Background(), s.Store().Machines, app+".*")
	if err != nil {
		t.Fatal(err)
	}
	return len(specs)
}

// TestFlyBadInput: what a Fly client may send that Perch must refuse,
// each with a 400 or 409 that says what was wrong, and nothing written.
func TestFlyBadInput(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096}); err != nil {
		t.Fatal(err)
	}

	t.Run("trailing data", func(t *testing.T) {
		for _, body := range []string{`{"name":"one"}{"name":"two"}`, `{"name":"one"} x`, `{"name":"one"}]`} {
			code, e := rawCall(t, s, "POST", "/v1/apps", body)
			if code != 400 || e.StatusCode != "invalid_argument" || !strings.Contains(e.Error, "data after its JSON value") {
				t.Errorf("POST /v1/apps %s: %d %+v; want 400 saying there is data after the JSON", body, code, e)
			}
		}
		if apps, _ := s.c.ListApps(ctx); len(apps) != 0 {
			t.Errorf("refused bodies created %d apps", len(apps))
		}
		if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{Name: "web"}); err != nil {
			t.Fatal(err)
		}
		code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", `{"config":{"image":"i"}}{"config":{"image":"j"}}`)
		if code != 400 || !strings.Contains(e.Error, "send exactly one JSON object") {
			t.Errorf("machine create with two objects: %d %+v", code, e)
		}
		code, _ = rawCall(t, s, "POST", "/v1/apps/web/machines", "{\"config\":{\"image\":\"i\"}}\n  \n")
		if code != 200 {
			t.Errorf("machine create with trailing white space: %d; want 200", code)
		}
	})

	t.Run("machine names", func(t *testing.T) {
		for _, name := range []string{"Web_1", "-web", "web.1", strings.Repeat("a", 64)} {
			code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", fmt.Sprintf(`{"name":%q,"config":{"image":"i"}}`, name))
			if code != 400 || !strings.Contains(e.Error, "is not valid") || !strings.Contains(e.Error, "lowercase letters, digits and hyphens") {
				t.Errorf("name %q: %d %+v; want 400 saying what a name may hold", name, code, e)
			}
		}
		if code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", `{"name":"web-1","config":{"image":"i"}}`); code != 200 {
			t.Fatalf("name web-1: %d %+v", code, e)
		}
		before := machineCount(t, s, "web")
		code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", `{"name":"web-1","config":{"image":"i"}}`)
		if code != 409 || e.StatusCode != "name_taken" || !strings.Contains(e.Error, `machine name "web-1" is already taken`) {
			t.Errorf("second web-1: %d %+v; want 409 name_taken", code, e)
		}
		if n := machineCount(t, s, "web"); n != before {
			t.Errorf("a refused name left a machine: %d machines, want %d", n, before)
		}
		// The same name in another app is fine.
		s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "api"})
		if code, e := rawCall(t, s, "POST", "/v1/apps/api/machines", `{"name":"web-1","config":{"image":"i"}}`); code != 200 {
			t.Errorf("web-1 in another app: %d %+v", code, e)
		}
	})

	t.Run("fields Perch does not implement", func(t *testing.T) {
		before := machineCount(t, s, "web")
		for _, tc := range []struct{ config, field, why string }{
			{`"files":[{"guest_path":"/etc/app.conf","raw_value":"aGVsbG8=","raw_file":"x"}]`, "config.files[0].raw_file", "not supported"},
			{`"checks":{"alive":{"type":"tcp","port":8080}}`, "config.checks", "services[].checks"},
			{`"schedule":"daily"`, "config.schedule", "schedule"},
			{`"guest":{"cpus":1,"gpus":1}`, "config.guest.gpus", "no GPUs"},
			{`"init":{"tty":true}`, "config.init.tty", "terminal"},
			{`"services":[{"internal_port":8080,"ports":[{"start_port":8000,"end_port":8010}]}]`, "config.services[0].ports[0].", "own ports[] entry"},
			{`"services":[{"internal_port":8080,"ports":[{"port":80,"handlers":["http"],"http_options":{"compress":true}}]}]`, "config.services[0].ports[0].http_options.compress", "not supported"},
		} {
			body := `{"config":{"image":"i",` + tc.config + `}}`
			code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", body)
			if code != 400 || !strings.Contains(e.Error, tc.field) || !strings.Contains(e.Error, "not supported by Perch") || !strings.Contains(e.Error, tc.why) {
				t.Errorf("%s: %d %q; want 400 naming %s and saying %q", tc.config, code, e.Error, tc.field, tc.why)
			}
		}
		if n := machineCount(t, s, "web"); n != before {
			t.Errorf("refused configs left machines: %d, want %d", n, before)
		}
		// Sent empty, as Fly's clients do for what they do not use, they
		// ask for nothing and pass.
		body := `{"skip_secrets":false,"config":{"image":"i","init":{},"mounts":[],"files":null,"auto_destroy":false,"dns":{"skip_registration":false},` +
			`"services":[{"internal_port":8080,"force_instance_key":null,"ports":[{"port":8443,"handlers":["tls"]}]}]}}`
		if code, e := rawCall(t, s, "POST", "/v1/apps/web/machines", body); code != 200 {
			t.Errorf("empty unimplemented fields: %d %+v; want 200", code, e)
		}
		code, e := rawCall(t, s, "POST", "/v1/apps", `{"name":"priv","org_slug":"personal","network":"my-net"}`)
		if code != 400 || !strings.Contains(e.Error, "network") {
			t.Errorf("app with a custom network: %d %+v; want 400 naming network", code, e)
		}
	})

	t.Run("a lease held by someone else", func(t *testing.T) {
		m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Config: api.MachineConfig{Image: "i", Metadata: map[string]string{"v": "1"}}})
		if err != nil {
			t.Fatal(err)
		}
		mp := "/v1/apps/web/machines/" + m.ID
		var lease flyMachineLease
		flyOK(t, s, "POST", mp+"/lease?ttl=120", nil, "", &lease)
		// Another client cannot take it, nor change the machine.
		flyRefused(t, s, "POST", mp+"/lease", nil, "", 409, "conflict", "already leased by admin")
		flyRefused(t, s, "POST", mp+"/metadata/v", map[string]string{"value": "2"}, "", 412, "failed_precondition", "fly-machine-lease-nonce")
		flyRefused(t, s, "POST", mp+"/stop", nil, "", 412, "failed_precondition", "leased by admin")
		flyRefused(t, s, "DELETE", mp+"?kill=true", nil, "", 412, "failed_precondition", "leased by admin")
		flyRefused(t, s, "DELETE", mp+"/lease", nil, "wrong", 412, "failed_precondition", "does not carry that lease's nonce")
		got, err := s.c.GetMachine(ctx, "web", m.ID)
		if err != nil || got.Config.Metadata["v"] != "1" || got.State == api.StateDestroying {
			t.Errorf("refused changes changed the machine: %+v %v", got, err)
		}
		code, e := rawCall(t, s, "POST", mp, `{"lease_ttl":30,"config":{"image":"i"}}`)
		if code != 400 || !strings.Contains(e.Error, "POST .../machines/"+m.ID+"/lease?ttl=30") {
			t.Errorf("update with lease_ttl: %d %+v; want 400 saying how to lease", code, e)
		}
		// The holder extends it with its nonce.
		var ext flyMachineLease
		flyOK(t, s, "POST", mp+"/lease?ttl=300", nil, lease.Data.Nonce, &ext)
		if ext.Data.Nonce != lease.Data.Nonce || ext.Data.ExpiresAt <= lease.Data.ExpiresAt {
			t.Errorf("extended lease %+v, was %+v", ext.Data, lease.Data)
		}
	})

	t.Run("an app being deleted", func(t *testing.T) {
		// As a delete that is waiting for hosts leaves it.
		s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "going"})
		if _, err := store.Modify(ctx, s.Store().Apps, "going", func(a *api.App) error { a.Status = api.AppDeleting; return nil }); err != nil {
			t.Fatal(err)
		}
		flyRefused(t, s, "POST", "/v1/apps/going/machines", map[string]any{"config": map[string]any{"image": "i"}}, "", 409, "conflict", "app going is being deleted; no machines can be created in it")
		flyRefused(t, s, "POST", "/v1/apps", flyCreateAppRequest{Name: "going"}, "", 409, "name_taken", "app going is being deleted")
		if n := machineCount(t, s, "going"); n != 0 {
			t.Errorf("%d machines created in an app being deleted", n)
		}
		var app flyApp
		flyOK(t, s, "GET", "/v1/apps/going", nil, "", &app)
		if app.Status != "deleting" {
			t.Errorf("app being deleted shows status %q", app.Status)
		}
	})

	t.Run("create leased", func(t *testing.T) {
		var m flyMachine
		flyOK(t, s, "POST", "/v1/apps/web/machines", map[string]any{"lease_ttl": 60, "config": map[string]any{"image": "i"}}, "", &m)
		if m.LeaseNonce == "" {
			t.Fatalf("machine created with lease_ttl has no nonce: %+v", m)
		}
		flyRefused(t, s, "POST", "/v1/apps/web/machines/"+m.ID+"/cordon", nil, "", 412, "failed_precondition", "leased")
		flyOK(t, s, "POST", "/v1/apps/web/machines/"+m.ID+"/cordon", nil, m.LeaseNonce, nil)
	})
}

// TestDeleteAppWhileCreating: machines created while their app is being
// deleted are refused with 409 once the delete has begun, and the
// delete completes, leaving no machine of the app behind.
func TestDeleteAppWhileCreating(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 64, MemoryMB: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	startFakeHost(t, s) // destroys what it is asked to
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "busy"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.c.CreateMachine(ctx, "busy", api.CreateMachineRequest{Config: api.MachineConfig{Image: "i"}}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	refusals := map[string]int{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := s.c.CreateMachine(ctx, "busy", api.CreateMachineRequest{Config: api.MachineConfig{Image: "i"}})
				var he *api.HTTPError
				if errors.As(err, &he) {
					mu.Lock()
					switch {
					case he.StatusCode == 409 && strings.Contains(he.Message, "is being deleted"):
						refusals["409 deleting"]++
					case he.StatusCode == 404:
						refusals["404 gone"]++
					default:
						refusals[he.Error()]++
					}
					mu.Unlock()
				} else if err != nil {
					mu.Lock()
					refusals[err.Error()]++
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, "creates under way", func() bool { return machineCount(t, s, "busy") > 6 })
	err := s.c.DestroyApp(ctx, "busy")
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("delete while creating: %v", err)
	}
	if _, err := s.c.GetApp(ctx, "busy"); !api.IsNotFound(err) {
		t.Errorf("app after delete: %v; want 404", err)
	}
	if n := machineCount(t, s, "busy"); n != 0 {
		t.Errorf("%d machines of the deleted app are left", n)
	}
	for what, n := range refusals {
		if what != "409 deleting" && what != "404 gone" {
			t.Errorf("%d creates failed otherwise: %s", n, what)
		}
	}
	if refusals["409 deleting"]+refusals["404 gone"] == 0 {
		t.Error("no create was refused: the creates did not overlap the delete")
	}
	t.Logf("refusals: %v", refusals)
	// The name is free again.
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "busy"}); err != nil {
		t.Errorf("re-create after delete: %v", err)
	}
}

// TestCreateWithoutRegion: a machine created without a region (as Fly's
// clients may) goes to the first region with room when the app has no
// machine, else to the region nearest the app's oldest machine that has
// room.
func TestCreateWithoutRegion(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, rg := range []string{"syd", "iad", "fra"} {
		if _, err := s.c.RegisterHost(ctx, api.Host{Region: rg, CPUs: 2, MemoryMB: 1024}); err != nil {
			t.Fatal(err)
		}
	}
	startFakeHost(t, s)
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "roam"})
	create := func(mem int) (string, error) {
		m, err := s.c.CreateMachine(ctx, "roam", api.CreateMachineRequest{Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: mem}}})
		if err != nil {
			return "", err
		}
		return m.Region, nil
	}
	if rg, err := create(256); err != nil || rg != "fra" {
		t.Fatalf("first machine went to %q (%v); want fra, the first region by code", rg, err)
	}
	// With its oldest machine in syd, the next ones go there while it has
	// room, then to the region nearest syd with room.
	first := mustOnly(t, s, "roam")
	if err := s.c.DestroyMachine(ctx, "roam", first, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first machine gone", func() bool { return machineCount(t, s, "roam") == 0 })
	if _, err := s.c.CreateMachine(ctx, "roam", api.CreateMachineRequest{Region: "syd", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 256}}}); err != nil {
		t.Fatal(err)
	}
	want := []string{"syd", "syd", "syd"} // 3 × 256 MB more fill syd's 1024
	for i, w := range want {
		if rg, err := create(256); err != nil || rg != w {
			t.Fatalf("machine %d went to %q (%v); want %s", i+2, rg, err, w)
		}
	}
	if rg, err := create(256); err != nil || rg != "iad" {
		t.Errorf("with syd full a machine went to %q (%v); want iad, nearer syd than fra", rg, err)
	}
	if _, err := create(4096); !strings.Contains(fmt.Sprint(err), "no region has room") {
		t.Errorf("a machine no host fits: %v; want 422 saying no region has room", err)
	}
}

func mustOnly(t *testing.T, s *testServer, app string) string {
	t.Helper()
	ms, err := s.c.ListMachines(context.Background(), app, "")
	if err != nil || len(ms) != 1 {
		t.Fatalf("machines of %s: %d, %v; want 1", app, len(ms), err)
	}
	return ms[0].ID
}
