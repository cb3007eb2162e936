package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// joinTestHost joins and registers a host of region with a join token,
// as an agent does, and returns its credential.
func joinTestHost(ctx context.Context, t *testing.T, s *testServer, region string) *api.HostCredential {
	t.Helper()
	jt, err := s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: region})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := api.NewClient(s.URL(), jt.Token).JoinHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.NewClient(s.URL(), cred.Bearer()).RegisterHost(ctx, api.Host{Region: region, CPUs: 2, MemoryMB: 1024}); err != nil {
		t.Fatal(err)
	}
	return cred
}

// TestHostPullsOnlyItsMachinesImages: a host credential pulls the image
// of a machine placed on its host, and is refused (403 DENIED) the image
// of a machine on another host, an image no machine runs, and a
// repository once its machine is gone; an image with [[statics]] is
// every host's to pull (every edge serves them).
func TestHostPullsOnlyItsMachinesImages(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	regHost := strings.TrimPrefix(s.URL(), "http://")
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"web:1", "api:1", "unused:1", "site:1"} {
		if err := remote.Write(mustRef(t, regHost+"/"+repo), img, remote.WithAuth(&authn.Basic{Username: "x", Password: s.AdminToken()})); err != nil {
			t.Fatalf("push %s: %v", repo, err)
		}
	}
	a := joinTestHost(ctx, t, s, "iad")
	b := joinTestHost(ctx, t, s, "ams")
	for _, app := range []string{"web", "api", "site"} {
		if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
			t.Fatal(err)
		}
	}
	web, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: regHost + "/web:1"}})
	if err != nil || web.HostID != a.HostID {
		t.Fatalf("web's machine on host A: %+v, %v", web, err)
	}
	apiM, err := s.c.CreateMachine(ctx, "api", api.CreateMachineRequest{Region: "ams", Config: api.MachineConfig{Image: regHost + "/api:1"}})
	if err != nil || apiM.HostID != b.HostID {
		t.Fatalf("api's machine on host B: %+v, %v", apiM, err)
	}

	// An app with [[statics]]: every edge serves them from its own copy
	// of the image, so every host may pull it.
	site, err := s.c.CreateMachine(ctx, "site", api.CreateMachineRequest{Region: "ams", Config: api.MachineConfig{Image: regHost + "/site:1",
		Statics: []api.Static{{GuestPath: "/public", URLPrefix: "/static/"}}}})
	if err != nil || site.HostID != b.HostID {
		t.Fatalf("site's machine on host B: %+v, %v", site, err)
	}

	pull := func(cred *api.HostCredential, repo string) error {
		ref := mustRef(t, regHost+"/"+repo)
		i, err := remote.Image(ref, remote.WithAuth(&authn.Basic{Username: "host", Password: cred.Bearer()}), remote.WithContext(ctx))
		if err != nil {
			return err
		}
		ls, err := i.Layers()
		if err != nil {
			return err
		}
		for _, l := range ls {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			rc.Close()
		}
		return nil
	}
	denied := func(err error) bool {
		var te *transport.Error
		return errors.As(err, &te) && te.StatusCode == http.StatusForbidden
	}
	if err := pull(a, "web:1"); err != nil {
		t.Errorf("host A pulling its machine's image: %v", err)
	}
	if err := pull(b, "api:1"); err != nil {
		t.Errorf("host B pulling its machine's image: %v", err)
	}
	if err := pull(a, "site:1"); err != nil {
		t.Errorf("host A pulling an image with statics that its edge serves: %v", err)
	}
	for _, c := range []struct {
		who  *api.HostCredential
		repo string
	}{{a, "api:1"}, {b, "web:1"}, {a, "unused:1"}, {b, "unused:1"}} {
		if err := pull(c.who, c.repo); !denied(err) {
			t.Errorf("host %s pulling %s (no machine of it on the host): %v, want 403", c.who.HostID, c.repo, err)
		}
	}
	// A blob of another host's image, by digest, is refused too.
	ls, _ := img.Layers()
	dg, _ := ls[0].Digest()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL()+"/v2/api/blobs/"+dg.String(), nil)
	req.SetBasicAuth("host", a.Bearer())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("host A reading a blob of api's repository: %d, want 403", resp.StatusCode)
	}

	// Its machine gone (the host deletes the spec once it destroyed the
	// machine), host A pulls web no more.
	if err := store.Delete(ctx, s.st.Machines, store.MachineKey("web", web.ID)); err != nil {
		t.Fatal(err)
	}
	if err := pull(a, "web:1"); !denied(err) {
		t.Errorf("host A pulling web:1 after its machine was destroyed: %v, want 403", err)
	}
}

// TestRemoveHost: perch hosts remove (DELETE /v1/hosts/{id}) is the
// operator's; it closes the host's live NATS connection at once, and
// from then on the host's credential is refused by NATS, the API and the
// registry; the host leaves the hosts list, its machine shows its host
// unreachable and a destroy removes it at once. Another host is untouched.
func TestRemoveHost(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a := joinTestHost(ctx, t, s, "iad")
	b := joinTestHost(ctx, t, s, "ams")
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/web:1"}})
	if err != nil || m.HostID != a.HostID {
		t.Fatalf("machine on host A: %+v, %v", m, err)
	}
	boot, err := api.NewClient(s.URL(), a.Bearer()).Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	connect := func(c *api.HostCredential, opts ...nats.Option) (*nats.Conn, error) {
		return nats.Connect(boot.NATSURL, append([]nats.Option{nats.UserInfo(c.HostID, c.Secret),
			nats.CustomInboxPrefix(store.HostInboxPrefix(c.HostID))}, opts...)...)
	}
	cut := make(chan struct{}, 1)
	ncA, err := connect(a, nats.DisconnectErrHandler(func(*nats.Conn, error) {
		select {
		case cut <- struct{}{}:
		default:
		}
	}), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatalf("host A connecting to NATS: %v", err)
	}
	defer ncA.Close()
	ncB, err := connect(b)
	if err != nil {
		t.Fatalf("host B connecting to NATS: %v", err)
	}
	defer ncB.Close()

	// Neither an organisation's token nor a host credential removes a host.
	orgTok := mustToken(t, s.c, "personal", api.CreateTokenRequest{Kind: "org", Name: "ci"}).Secret
	_, err = api.NewClient(s.URL(), orgTok).RemoveHost(ctx, a.HostID)
	wantStatus(t, err, 403, "")
	_, err = api.NewClient(s.URL(), b.Bearer()).RemoveHost(ctx, a.HostID)
	wantStatus(t, err, 403, "host credential")
	_, err = s.c.RemoveHost(ctx, "iad-nosuch")
	wantStatus(t, err, 404, "not found")
	_, err = s.c.RemoveHost(ctx, "../etc")
	wantStatus(t, err, 400, "")

	out, err := s.c.RemoveHost(ctx, a.HostID)
	if err != nil {
		t.Fatalf("remove host A: %v", err)
	}
	if want := []string{"web/" + m.ID}; out.ID != a.HostID || !slices.Equal(out.LostMachines, want) {
		t.Errorf("removed %+v, want host %s with lost machines %v", out, a.HostID, want)
	}
	select {
	case <-cut:
	case <-time.After(10 * time.Second):
		t.Fatal("host A's NATS connection still up 10 s after its removal")
	}
	if _, err := connect(a); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("host A connecting to NATS after its removal: %v, want an authorization violation", err)
	}
	_, err = api.NewClient(s.URL(), a.Bearer()).Bootstrap(ctx)
	wantStatus(t, err, 401, "host credential")
	_, err = api.NewClient(s.URL(), a.Bearer()).RegisterHost(ctx, api.Host{ID: a.HostID, Region: "iad", CPUs: 2, MemoryMB: 1024})
	wantStatus(t, err, 401, "")
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL()+"/v2/", nil)
	req.SetBasicAuth("host", a.Bearer())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("registry with the removed host's credential: %d, want 401", resp.StatusCode)
	}

	hosts, err := s.c.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, h := range hosts {
		ids = append(ids, h.ID)
	}
	if slices.Contains(ids, a.HostID) || !slices.Contains(ids, b.HostID) {
		t.Errorf("hosts after removing %s: %v", a.HostID, ids)
	}
	got, err := s.c.GetMachine(ctx, "web", m.ID)
	if err != nil || got.HostStatus != api.HostUnreachable {
		t.Errorf("machine of the removed host: %+v, %v; want host_status %s", got, err, api.HostUnreachable)
	}
	if err := s.c.DestroyMachine(ctx, "web", m.ID, false); err != nil {
		t.Fatal(err)
	}
	_, err = s.c.GetMachine(ctx, "web", m.ID)
	wantStatus(t, err, 404, "")
	_, err = s.c.RemoveHost(ctx, a.HostID)
	wantStatus(t, err, 404, "not found")

	// Host B keeps its connection and its rights: its heartbeat lands,
	// its NATS user still reads the host records.
	if err := api.NewClient(s.URL(), b.Bearer()).Heartbeat(ctx, b.HostID, api.HostHeartbeat{}); err != nil {
		t.Errorf("host B's heartbeat after A's removal: %v", err)
	}
	err = api.NewClient(s.URL(), a.Bearer()).Heartbeat(ctx, a.HostID, api.HostHeartbeat{})
	wantStatus(t, err, 401, "")
	js, err := jetstream.New(ncB)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, store.BucketHosts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, b.HostID); err != nil {
		t.Errorf("host B reading its record after A's removal: %v", err)
	}
}

// TestFlyPersonalOrg: org_slug "personal", Fly's name for a user's own
// organisation, is the token's own organisation: an app created with it
// by acme's token is acme's, and listing with it shows acme's apps only.
// The admin's "personal" is the organisation of that name.
func TestFlyPersonalOrg(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.c.CreateOrg(ctx, api.CreateOrgRequest{Slug: "acme"}); err != nil {
		t.Fatal(err)
	}
	acmeTok := mustToken(t, s.c, "acme", api.CreateTokenRequest{Kind: "org", Name: "ci"}).Secret
	acme := api.NewClient(s.URL(), acmeTok)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "admins", Org: "personal"}); err != nil {
		t.Fatal(err)
	}
	app, err := acme.CreateApp(ctx, api.CreateAppRequest{AppName: "mine", Org: "personal"})
	if err != nil {
		t.Fatalf("acme creating an app with org_slug personal: %v", err)
	}
	if app.Org != "acme" || app.Organization.Slug != "acme" {
		t.Errorf("app created with org_slug personal by acme's token is in %q (%+v), want acme", app.Org, app.Organization)
	}
	list := func(tok string) []string {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL()+"/v1/apps?org_slug=personal", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out api.AppList
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
			t.Fatalf("GET /v1/apps?org_slug=personal: %d, %v", resp.StatusCode, err)
		}
		var names []string
		for _, a := range out.Apps {
			names = append(names, a.Name)
		}
		return names
	}
	if got := list(acmeTok); !slices.Equal(got, []string{"mine"}) {
		t.Errorf("acme listing org_slug=personal: %v, want [mine]", got)
	}
	if got := list(s.AdminToken()); !slices.Equal(got, []string{"admins"}) {
		t.Errorf("the admin listing org_slug=personal: %v, want [admins]", got)
	}
}
