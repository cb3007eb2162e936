package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
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
