package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
)

// who a route lets in, as this test expects it (independently of the
// scope routes.go gives it, which it checks).
type class int

const (
	forAdmin    class = iota // operator only
	forAgent                 // admin or host
	forAnyone                // any valid token
	forApps                  // the app collection
	forApp                   // one app of the org
	forOrg                   // the org itself
	forOrgAdmin              // managing the org's members and tokens
	forOrgList               // the org collection
)

// routeClasses is the test's own list of every API route. A route added to
// routes.go without a line here fails TestTokenScopes.
var routeClasses = map[string]class{
	"POST /v1/apps":                                      forApps,
	"GET /v1/apps":                                       forApps,
	"GET /v1/apps/{app}":                                 forApp,
	"DELETE /v1/apps/{app}":                              forApp,
	"GET /v1/apps/{app}/machines":                        forApp,
	"POST /v1/apps/{app}/machines":                       forApp,
	"GET /v1/apps/{app}/machines/{id}":                   forApp,
	"POST /v1/apps/{app}/machines/{id}":                  forApp,
	"DELETE /v1/apps/{app}/machines/{id}":                forApp,
	"POST /v1/apps/{app}/machines/{id}/start":            forApp,
	"POST /v1/apps/{app}/machines/{id}/stop":             forApp,
	"POST /v1/apps/{app}/machines/{id}/suspend":          forApp,
	"GET /v1/apps/{app}/machines/{id}/wait":              forApp,
	"POST /v1/apps/{app}/machines/{id}/cordon":           forApp,
	"POST /v1/apps/{app}/machines/{id}/uncordon":         forApp,
	"POST /v1/apps/{app}/machines/{id}/restart":          forApp,
	"POST /v1/apps/{app}/machines/{id}/signal":           forApp,
	"GET /v1/apps/{app}/machines/{id}/events":            forApp,
	"POST /v1/apps/{app}/machines/{id}/lease":            forApp,
	"GET /v1/apps/{app}/machines/{id}/lease":             forApp,
	"DELETE /v1/apps/{app}/machines/{id}/lease":          forApp,
	"GET /v1/apps/{app}/machines/{id}/metadata":          forApp,
	"POST /v1/apps/{app}/machines/{id}/metadata/{key}":   forApp,
	"DELETE /v1/apps/{app}/machines/{id}/metadata/{key}": forApp,
	"GET /v1/apps/{app}/logs":                            forApp,
	"GET /v1/apps/{app}/releases":                        forApp,
	"POST /v1/apps/{app}/releases":                       forApp,
	"GET /v1/apps/{app}/releases/{version}":              forApp,
	"PATCH /v1/apps/{app}/releases/{version}":            forApp,
	"POST /v1/apps/{app}/certificates":                   forApp,
	"GET /v1/apps/{app}/certificates":                    forApp,
	"GET /v1/apps/{app}/certificates/{host}":             forApp,
	"DELETE /v1/apps/{app}/certificates/{host}":          forApp,
	"GET /v1/apps/{app}/autoscale":                       forApp,
	"PUT /v1/apps/{app}/autoscale":                       forApp,
	"DELETE /v1/apps/{app}/autoscale":                    forApp,
	"GET /v1/apps/{app}/usage":                           forApp,
	"GET /v1/orgs/{org}/usage":                           forOrg,
	"GET /v1/apps/{app}/budget":                          forApp,
	"PUT /v1/apps/{app}/budget":                          forApp,
	"DELETE /v1/apps/{app}/budget":                       forApp,
	"POST /v1/apps/{app}/budget/resume":                  forApp,
	"GET /v1/orgs/{org}/budget":                          forOrg,
	"PUT /v1/orgs/{org}/budget":                          forOrg,
	"DELETE /v1/orgs/{org}/budget":                       forOrg,
	"POST /v1/orgs/{org}/budget/resume":                  forOrg,
	"GET /v1/apps/{app}/secrets":                         forApp,
	"POST /v1/apps/{app}/secrets":                        forApp,
	"POST /v1/apps/{app}/secrets/{name}":                 forApp,
	"DELETE /v1/apps/{app}/secrets/{name}":               forApp,
	"GET /v1/apps/{app}/ip_assignments":                  forApp,
	"POST /v1/apps/{app}/ip_assignments":                 forApp,
	"DELETE /v1/apps/{app}/ip_assignments/{ip}":          forApp,
	"GET /v1/apps/{app}/volumes":                         forApp,
	"POST /v1/apps/{app}/volumes":                        forApp,
	"GET /v1/apps/{app}/volumes/{id}":                    forApp,
	"DELETE /v1/apps/{app}/volumes/{id}":                 forApp,
	"PUT /v1/apps/{app}/volumes/{id}/extend":             forApp,
	"GET /v1/apps/{app}/volumes/{id}/snapshots":          forApp,
	"POST /v1/apps/{app}/volumes/{id}/snapshots":         forApp,
	"GET /v1/orgs":                                       forOrgList,
	"POST /v1/orgs":                                      forAdmin,
	"GET /v1/orgs/{org}":                                 forOrg,
	"POST /v1/orgs/{org}/members":                        forOrgAdmin,
	"DELETE /v1/orgs/{org}/members/{member}":             forOrgAdmin,
	"GET /v1/orgs/{org}/tokens":                          forOrg,
	"POST /v1/orgs/{org}/tokens":                         forOrgAdmin,
	"DELETE /v1/orgs/{org}/tokens/{id}":                  forOrgAdmin,
	"GET /v1/whoami":                                     forAnyone,
	"GET /v1/hosts":                                      forAdmin,
	"GET /v1/cluster":                                    forAdmin,
	"DELETE /v1/cluster/servers/{name}":                  forAdmin,
	"POST /v1/hosts":                                     forAgent,
	"POST /v1/hosts/{id}/heartbeat":                      forAgent,
	"POST /v1/hosts/join-tokens":                         forAdmin, // hostauth.go
	"DELETE /v1/hosts/{id}":                              forAdmin,
	"GET /v1/agent/bootstrap":                            forAgent,
	"GET /v1/regions":                                    forAnyone,
	"GET /v1/platform/regions":                           forAnyone,
	"POST /v1/regions/{region}/drain":                    forAdmin,
	"POST /v1/regions/{region}/undrain":                  forAdmin,
}

// tokenCase is a token and what it should reach.
type tokenCase struct {
	name string
	tok  string
	// allowed says whether the token may call a route of class c with
	// method m (on app "web" of org "acme").
	allowed func(c class, m string) bool
}

func isRead(m string) bool { return m == http.MethodGet || m == http.MethodHead }

// tamper rewrites the caveat from into to inside a token without signing
// again: what a holder who wants more than it was given would try.
func tamper(t *testing.T, tok, from, to string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(tok, auth.Prefix))
	if err != nil || len(from) != len(to) || !bytes.Contains(b, []byte(from)) {
		t.Fatalf("cannot tamper with %q: %v", from, err)
	}
	return auth.Prefix + base64.RawURLEncoding.EncodeToString(bytes.Replace(b, []byte(from), []byte(to), 1))
}

func mustToken(t *testing.T, c *api.Client, org string, req api.CreateTokenRequest) api.NewToken {
	t.Helper()
	nt, err := c.CreateToken(context.Background(), org, req)
	if err != nil {
		t.Fatalf("create %s token of %s: %v", req.Kind, org, err)
	}
	return *nt
}

func mustNarrow(t *testing.T, tok string, caveats ...string) string {
	t.Helper()
	n, err := auth.Attenuate(tok, caveats...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTokenScopes is the token test: for every route of the router and for
// the registry's pull and push, the tokens of another organisation, expired,
// revoked, narrowed to read-only (writes), narrowed to another app, and
// tampered with are refused with 401 or 403, and the tokens allowed are not.
func TestTokenScopes(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	admin := s.c

	// The router's routes are apiRoutes: every one needs a line here.
	var patterns []string
	for _, rt := range apiRoutes {
		patterns = append(patterns, rt.pattern)
		c, ok := routeClasses[rt.pattern]
		if !ok {
			t.Errorf("route %q has no line in routeClasses: add it with who may call it", rt.pattern)
			continue
		}
		if want := scopeOf(c); rt.scope != want {
			t.Errorf("route %q has scope %d in routes.go; the test expects %d", rt.pattern, rt.scope, want)
		}
	}
	for p := range routeClasses {
		if !slices.Contains(patterns, p) {
			t.Errorf("routeClasses lists %q, which the router does not have", p)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	for _, o := range []string{"acme", "other"} {
		if _, err := admin.CreateOrg(ctx, api.CreateOrgRequest{Slug: o}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []struct{ app, org string }{{"web", "acme"}, {"wed", "acme"}, {"rival", "other"}} {
		if _, err := admin.CreateApp(ctx, api.CreateAppRequest{AppName: a.app, Org: a.org}); err != nil {
			t.Fatal(err)
		}
	}
	acme := mustToken(t, admin, "acme", api.CreateTokenRequest{Kind: "org", Name: "ci"}).Secret
	acmeC := api.NewClient(s.URL(), acme)
	member, err := admin.InviteMember(ctx, "acme", api.InviteRequest{Member: "ada@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	deploy := mustToken(t, acmeC, "acme", api.CreateTokenRequest{Kind: "deploy", App: "web"}).Secret
	readonlyRoot := mustToken(t, acmeC, "acme", api.CreateTokenRequest{Kind: "readonly"}).Secret
	other := mustToken(t, admin, "other", api.CreateTokenRequest{Kind: "org"}).Secret
	revoked := mustToken(t, acmeC, "acme", api.CreateTokenRequest{Kind: "org", Name: "leaked"})
	expiredRoot := mustToken(t, acmeC, "acme", api.CreateTokenRequest{Kind: "org", ExpiresIn: 1})
	narrowWed := mustNarrow(t, acme, auth.AppCaveat("wed"))
	narrowRevoked := mustNarrow(t, revoked.Secret, auth.AppCaveat("web"))

	// The revoked token works until it is revoked, then at once it and every
	// token narrowed from it are refused.
	if _, err := api.NewClient(s.URL(), narrowRevoked).GetApp(ctx, "web"); err != nil {
		t.Fatalf("token refused before its revocation: %v", err)
	}
	if err := acmeC.RevokeToken(ctx, "acme", revoked.ID); err != nil {
		t.Fatal(err)
	}

	// The registry: acme pushes web:v1 as <registry>/<name>:tag, which makes
	// the repository acme's.
	regHost := strings.TrimPrefix(s.URL(), "http://")
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	push := func(tok, repo string) error {
		ref, err := name.ParseReference(regHost+"/"+repo, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		return remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "x", Password: tok}))
	}
	if err := push(acme, "web:v1"); err != nil {
		t.Fatalf("acme pushing web:v1: %v", err)
	}
	if err := push(other, "web:v1"); err == nil {
		t.Errorf("another organisation overwrote acme's web:v1")
	}
	if err := push(other, "rival:v1"); err != nil {
		t.Errorf("other pushing its own rival:v1: %v", err)
	}
	manifest, err := remote.Get(mustRef(t, regHost+"/web:v1"), remote.WithAuth(&authn.Basic{Username: "x", Password: acme}))
	if err != nil {
		t.Fatalf("acme pulling web:v1: %v", err)
	}

	// Wait out the expired root token's one second.
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := api.NewClient(s.URL(), expiredRoot.Secret).Whoami(ctx)
		if api.IsUnauthorized(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a token of 1 s still works after 5 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	orgWide := func(c class, m string) bool {
		return c != forAdmin && c != forAgent
	}
	never := func(class, string) bool { return false }
	cases := []tokenCase{
		{"admin", s.AdminToken(), func(class, string) bool { return true }},
		{"acme org token", acme, orgWide},
		{"acme member token", member.Secret, orgWide},
		{"acme token narrowed to web (offline)", mustNarrow(t, acme, auth.AppCaveat("web")), func(c class, m string) bool {
			return c == forAnyone || c == forOrgList || c == forApp || c == forApps && isRead(m)
		}},
		{"acme deploy token for web", deploy, func(c class, m string) bool {
			return c == forAnyone || c == forOrgList || c == forApp || c == forApps && isRead(m)
		}},
		{"acme token narrowed to read-only (offline)", mustNarrow(t, acme, auth.ReadOnlyCaveat), func(c class, m string) bool {
			return orgWide(c, m) && isRead(m)
		}},
		{"acme read-only token", readonlyRoot, func(c class, m string) bool { return orgWide(c, m) && isRead(m) }},
		{"other organisation's token", other, func(c class, m string) bool {
			return c == forAnyone || c == forOrgList || c == forApps && isRead(m)
		}},
		{"acme token narrowed to another app (wed)", narrowWed, func(c class, m string) bool {
			return c == forAnyone || c == forOrgList || c == forApps && isRead(m)
		}},
		{"acme token expired (caveat)", mustNarrow(t, acme, auth.ExpiresCaveat(time.Now().Add(-time.Minute))), never},
		{"acme token expired (root)", expiredRoot.Secret, never},
		{"revoked token", revoked.Secret, never},
		{"token narrowed from a revoked one", narrowRevoked, never},
		{"tampered token (app=wed rewritten app=web)", tamper(t, narrowWed, "app=wed", "app=web"), never},
		{"tampered token (readonly rewritten)", tamper(t, mustNarrow(t, acme, auth.ReadOnlyCaveat), "readonly", "region=x"), never},
		{"no token", "", never},
		{"not a token", "perch_0123456789abcdef", never},
	}

	// One request per route and token. Destructive routes go last so that
	// what they remove is there for the others, deleting the app last of
	// all; a token revocation takes a throwaway token.
	routes := slices.Clone(apiRoutes)
	rank := func(p string) int {
		switch {
		case p == "DELETE /v1/apps/{app}":
			return 2
		case strings.HasPrefix(p, "DELETE"):
			return 1
		}
		return 0
	}
	sort.SliceStable(routes, func(i, j int) bool { return rank(routes[i].pattern) < rank(routes[j].pattern) })
	var requests, refusedOK, allowedOK int
	call := func(method, path, body, tok string) (int, string) {
		req, err := http.NewRequest(method, s.URL()+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		req.Header.Set("Content-Type", "application/json")
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(cctx))
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		requests++
		return resp.StatusCode, string(b)
	}
	check := func(what string, allowed bool, code int, body string) {
		refused := code == http.StatusUnauthorized || code == http.StatusForbidden
		switch {
		case allowed && refused:
			t.Errorf("%s: refused with %d (%s); want it allowed", what, code, strings.TrimSpace(body))
		case !allowed && !refused:
			t.Errorf("%s: answered %d (%s); want 401 or 403", what, code, strings.TrimSpace(body))
		case refused:
			refusedOK++
		default:
			allowedOK++
		}
	}
	for _, rt := range routes {
		method, pattern, _ := strings.Cut(rt.pattern, " ")
		c := routeClasses[rt.pattern]
		path := strings.NewReplacer("{app}", "web", "{org}", "acme", "{id}", "0123456789abcdef", "{key}", "k",
			"{version}", "1", "{host}", "web.example.com", "{name}", "FOO", "{member}", "nobody@example.com").Replace(pattern)
		body := "{}"
		if rt.pattern == "POST /v1/apps" {
			body = `{"app_name":"newapp","org_slug":"acme"}`
		}
		// Refused ones first: an allowed DELETE changes what is there.
		slices.SortStableFunc(cases, func(a, b tokenCase) int {
			return boolInt(a.allowed(c, method)) - boolInt(b.allowed(c, method))
		})
		for _, tc := range cases {
			if rt.pattern == "DELETE /v1/orgs/{org}/tokens/{id}" && tc.allowed(c, method) {
				path = "/v1/orgs/acme/tokens/" + mustToken(t, admin, "acme", api.CreateTokenRequest{Kind: "org", Name: "throwaway"}).ID
			}
			code, resp := call(method, path, body, tc.tok)
			check(fmt.Sprintf("%s %s as %s", method, path, tc.name), tc.allowed(c, method), code, resp)
		}
	}

	// The registry: pull a manifest, start an upload, put a manifest over
	// acme's web:v1.
	regOps := []struct {
		method, path, body string
	}{
		{"GET", "/v2/web/manifests/v1", ""},
		{"POST", "/v2/web/blobs/uploads/", ""},
		{"PUT", "/v2/web/manifests/v1", string(manifest.Manifest)},
	}
	for _, op := range regOps {
		for _, tc := range cases {
			allowed := tc.allowed(forApp, op.method)
			req, _ := http.NewRequest(op.method, s.URL()+op.path, strings.NewReader(op.body))
			req.Header.Set("Content-Type", string(manifest.MediaType))
			if tc.tok != "" {
				req.SetBasicAuth("x", tc.tok)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			requests++
			check(fmt.Sprintf("registry %s %s as %s", op.method, op.path, tc.name), allowed, resp.StatusCode, string(b))
		}
	}

	// Listing apps shows a token its own organisation's.
	apps, err := api.NewClient(s.URL(), other).ListApps(ctx)
	if err != nil || len(apps) != 1 || apps[0].Name != "rival" {
		t.Errorf("other's token lists %+v (%v); want rival alone", apps, err)
	}
	// Fly's newer scheme carries the same token.
	req, _ := http.NewRequest("GET", s.URL()+"/v1/apps/wed", nil)
	req.Header.Set("Authorization", "FlyV1 "+acme)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Errorf("Authorization: FlyV1 <token>: %v %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}
	t.Logf("token test: %d routes and %d registry operations, %d token kinds; %d requests: %d refused as expected (401/403), %d allowed as expected",
		len(apiRoutes), len(regOps), len(cases), requests, refusedOK, allowedOK)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// scopeOf is the scope routes.go should give a route of class c.
func scopeOf(c class) scope {
	return map[class]scope{forAdmin: scopeAdmin, forAgent: scopeAgent, forAnyone: scopeAny, forApps: scopeApps,
		forApp: scopeApp, forOrg: scopeOrg, forOrgAdmin: scopeOrgAdmin, forOrgList: scopeOrgList}[c]
}

// TestRegionCaveat: a token narrowed to one region reads the app, creates
// and acts on machines of that region only, and makes no other write.
func TestRegionCaveat(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	for _, r := range []string{"iad", "ams"} {
		if _, err := s.c.RegisterHost(ctx, api.Host{Region: r, CPUs: 4, MemoryMB: 4096}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web", Org: "acme"}); err != nil {
		t.Fatal(err)
	}
	machines := map[string]string{}
	for _, r := range []string{"iad", "ams"} {
		m, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: r, Config: api.MachineConfig{Image: "i"}})
		if err != nil {
			t.Fatal(err)
		}
		machines[r] = m.ID
	}
	root := mustToken(t, s.c, "acme", api.CreateTokenRequest{Kind: "org"}).Secret
	ams := api.NewClient(s.URL(), mustNarrow(t, root, auth.RegionCaveat("ams")))

	if _, err := ams.ListMachines(ctx, "web", ""); err != nil {
		t.Errorf("region-narrowed token cannot list machines: %v", err)
	}
	if err := ams.StopMachine(ctx, "web", machines["ams"], nil); hasStatus(err, 401, 403) {
		t.Errorf("stopping the ams machine: %v; want it allowed", err)
	}
	err := ams.StopMachine(ctx, "web", machines["iad"], nil)
	wantStatus(t, err, 403, "narrowed to region ams")
	_, err = ams.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	wantStatus(t, err, 403, "narrowed to region ams")
	if _, err := ams.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "ams", Config: api.MachineConfig{Image: "i"}}); err != nil {
		t.Errorf("creating a machine in ams: %v", err)
	}
	one := "1"
	_, err = ams.UpdateSecrets(ctx, "web", map[string]*string{"A": &one})
	wantStatus(t, err, 403, "narrowed to region ams")
}

func hasStatus(err error, codes ...int) bool {
	var he *api.HTTPError
	return errors.As(err, &he) && slices.Contains(codes, he.StatusCode)
}

// TestOrgTokenSurvivesRestart: a token keeps working across a restart of
// the control plane (the signing key is in the data dir, the record in the
// store), and one from another server's key is refused.
func TestOrgTokenSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	tok := mustToken(t, s.c, DefaultOrg, api.CreateTokenRequest{Kind: "org", Name: "keep"}).Secret
	s.stop()
	s = startServer(t, dir)
	w, err := api.NewClient(s.URL(), tok).Whoami(context.Background())
	if err != nil || w.Org != DefaultOrg || w.Name != "keep" {
		t.Fatalf("after a restart: %+v, %v; want the token of %s named keep", w, err, DefaultOrg)
	}
	other := startServer(t, t.TempDir())
	_, err = api.NewClient(other.URL(), tok).Whoami(context.Background())
	wantStatus(t, err, 401, "signature")
}
