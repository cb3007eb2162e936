package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// TestHostJoin: a join token is spent by one join and gives a host
// credential that bootstraps and registers only its own host, pulls but
// never pushes images, reaches NATS as the host's own user (also after a
// control plane restart), and opens no other API route.
func TestHostJoin(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	_, err := s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "nowhere"})
	wantStatus(t, err, 400, "region")
	_, err = s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "iad", Expiry: "forever"})
	wantStatus(t, err, 400, "expiry")
	jt, err := s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "iad", Expiry: "10m"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(jt.Token, joinTokenPrefix) || time.Until(jt.ExpiresAt) > 11*time.Minute {
		t.Errorf("join token %+v", jt)
	}
	// A join token is no API token.
	_, err = api.NewClient(s.URL(), jt.Token).ListApps(ctx)
	wantStatus(t, err, 401, "token")

	cred, err := api.NewClient(s.URL(), jt.Token).JoinHost(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if cred.Region != "iad" || !strings.HasPrefix(cred.HostID, "iad-") || len(cred.Secret) < 32 {
		t.Errorf("credential %+v", cred)
	}
	_, err = api.NewClient(s.URL(), jt.Token).JoinHost(ctx)
	wantStatus(t, err, 401, "already used")
	_, err = api.NewClient(s.URL(), s.AdminToken()).JoinHost(ctx)
	wantStatus(t, err, 401, "join token")

	// Expired: spent too, and says so.
	old, err := s.newJoinToken(ctx, "iad", -time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = api.NewClient(s.URL(), old.Token).JoinHost(ctx)
	wantStatus(t, err, 401, "expired")

	host := api.NewClient(s.URL(), cred.Bearer())
	boot, err := host.Bootstrap(ctx)
	if err != nil {
		t.Fatalf("bootstrap with the host credential: %v", err)
	}
	if boot.NATSUser != cred.HostID || boot.NATSToken != "" {
		t.Errorf("bootstrap gave %+v: want the host's own NATS user and no shared token", boot)
	}
	_, err = s.c.Bootstrap(ctx)
	wantStatus(t, err, 400, "join-token")

	reg := api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024}
	h, err := host.RegisterHost(ctx, reg)
	if err != nil || h.ID != cred.HostID {
		t.Fatalf("register: %+v, %v", h, err)
	}
	other := reg
	other.ID = "iad-00000000"
	_, err = host.RegisterHost(ctx, other)
	wantStatus(t, err, 403, "only itself")
	other = reg
	other.Region = "ams"
	_, err = host.RegisterHost(ctx, other)
	wantStatus(t, err, 403, "only itself")

	// Every other route of the router is refused to a host credential.
	for _, rt := range apiRoutes {
		if rt.scope == scopeAgent {
			continue
		}
		method, pattern, _ := strings.Cut(rt.pattern, " ")
		path := strings.NewReplacer("{app}", "web", "{org}", "personal", "{id}", "0123456789abcdef", "{key}", "k", "{version}", "1",
			"{host}", "web.example.com", "{name}", "FOO", "{member}", "m", "{id}", "x").Replace(pattern)
		req, _ := http.NewRequestWithContext(ctx, method, s.URL()+path, strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+cred.Bearer())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s with a host credential: %d, want 403", rt.pattern, resp.StatusCode)
		}
	}
	_, err = host.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "iad"})
	wantStatus(t, err, 403, "host credential")
	forged := *cred
	forged.Secret = strings.Repeat("0", len(cred.Secret))
	_, err = api.NewClient(s.URL(), forged.Bearer()).Bootstrap(ctx)
	wantStatus(t, err, 401, "host credential")

	// The registry: a host pulls (here: the API version check), never pushes.
	for _, c := range []struct {
		method, path string
		want         int
	}{
		{"GET", "/v2/", 200},
		{"POST", "/v2/hello/blobs/uploads/", 403},
	} {
		req, _ := http.NewRequestWithContext(ctx, c.method, s.URL()+c.path, nil)
		req.SetBasicAuth("host", cred.Bearer())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s %s with the host credential: %d, want %d", c.method, c.path, resp.StatusCode, c.want)
		}
	}

	// Machines: one placed on this host, one on a host of another region.
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	mine, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/web:1"}})
	if err != nil || mine.HostID != cred.HostID {
		t.Fatalf("machine on the joined host: %+v, %v", mine, err)
	}
	jt2, err := s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "ams"})
	if err != nil {
		t.Fatal(err)
	}
	cred2, err := api.NewClient(s.URL(), jt2.Token).JoinHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.NewClient(s.URL(), cred2.Bearer()).RegisterHost(ctx, api.Host{Region: "ams", CPUs: 2, MemoryMB: 1024}); err != nil {
		t.Fatal(err)
	}
	theirs, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "ams", Config: api.MachineConfig{Image: "r/web:1"}})
	if err != nil || theirs.HostID != cred2.HostID {
		t.Fatalf("machine on the other host: %+v, %v", theirs, err)
	}
	natsAs := func() error {
		st, err := store.OpenHost(ctx, boot.NATSURL, store.Auth{User: boot.NATSUser, Password: cred.Secret, InboxPrefix: boot.NATSInboxPrefix}, "host")
		if err != nil {
			return err
		}
		defer st.Close()
		if _, _, err = store.Get[api.Host](ctx, st.Hosts, cred.HostID); err != nil {
			return fmt.Errorf("its own host record: %w", err)
		}
		if _, err := st.Status.Put(ctx, store.MachineKey("web", mine.ID), []byte(`{}`)); err != nil {
			return fmt.Errorf("status of its own machine: %w", err)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := st.Status.Put(short, store.MachineKey("web", theirs.ID), []byte(`{}`)); err == nil {
			return errors.New("it wrote the status of the other host's machine")
		}
		return nil
	}
	if err := natsAs(); err != nil {
		t.Fatalf("host's NATS user after joining: %v", err)
	}
	s.stop()
	s = startServer(t, dir)
	boot, err = api.NewClient(s.URL(), cred.Bearer()).Bootstrap(ctx)
	if err != nil {
		t.Fatalf("bootstrap after a restart: %v", err)
	}
	if err := natsAs(); err != nil {
		t.Fatalf("host's NATS user after a control plane restart: %v", err)
	}
}
