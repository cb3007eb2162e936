package heroku_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/heroku"
	"github.com/perchhq/perch/internal/heroku/herokutest"
)

func standIn(t *testing.T) *herokutest.Server {
	t.Helper()
	s := herokutest.New("tok")
	t.Cleanup(s.Close)
	s.AddApp(herokutest.App{Name: "shop", Region: "eu", Stack: "heroku-24",
		ConfigVars: map[string]string{"GREETING": "hi", "DATABASE_URL": "postgres://x"},
		Formation: []herokutest.Formation{
			{Type: "web", Command: "python3 app.py", Quantity: 2},
			{Type: "worker", Command: "python3 worker.py", Quantity: 1, Size: "standard-2X"},
			{Type: "clock", Command: "python3 clock.py", Quantity: 0},
		}})
	return s
}

var procs = map[string]string{"web": "python3 app.py", "worker": "python3 worker.py", "release": "python3 migrate.py"}

// The client reads the app, its newest succeeded release (skipping a
// failed one), the slug, config vars and a formation spread over pages
// (Range max=1: every page follows Next-Range).
func TestClientReadsAppAcrossPages(t *testing.T) {
	s := standIn(t)
	s.Release("shop", herokutest.Slug{Tgz: herokutest.MakeSlug(map[string]string{"Procfile": "web: a"}), ProcessTypes: procs}, "Deploy 1")
	s.Release("shop", herokutest.Slug{Tgz: herokutest.MakeSlug(map[string]string{"Procfile": "web: b"}), ProcessTypes: procs, Commit: "abc123"}, "Deploy 2")
	s.FailRelease("shop")
	defer func(n int) { heroku.PageSize = n }(heroku.PageSize)
	heroku.PageSize = 1
	c := heroku.NewClient(s.URL, "tok")
	ctx := context.Background()
	app, err := c.App(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if app.Name != "shop" || app.Region.Name != "eu" || app.Stack.Name != "heroku-24" || app.Generation == nil || app.Generation.Name != "cedar" {
		t.Errorf("app = %+v", app)
	}
	rel, err := c.LatestRelease(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if rel.Version != 2 || rel.Slug == nil {
		t.Fatalf("latest release = v%d slug %v; want v2 (v3 failed)", rel.Version, rel.Slug)
	}
	sl, err := c.Slug(ctx, "shop", rel.Slug.ID)
	if err != nil {
		t.Fatal(err)
	}
	if sl.Commit == nil || *sl.Commit != "abc123" || sl.ProcessTypes["web"] != "python3 app.py" || sl.Stack.Name != "heroku-24" || sl.Checksum == nil || !strings.HasPrefix(*sl.Checksum, "SHA256:") {
		t.Errorf("slug = %+v", sl)
	}
	fs, err := c.Formation(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 3 || fs[0].Type != "clock" || fs[2].Type != "worker" || fs[2].Size != "standard-2X" || fs[1].Quantity != 2 {
		t.Errorf("formation = %+v; want clock, web (2), worker over three pages", fs)
	}
	vars, err := c.ConfigVars(ctx, "shop")
	if err != nil || vars["GREETING"] != "hi" || len(vars) != 2 {
		t.Errorf("config vars = %v, %v", vars, err)
	}
	var formationPages []string
	for _, r := range s.Requests() {
		if strings.Contains(r, "/formation") {
			formationPages = append(formationPages, r)
		}
	}
	want := []string{"GET /apps/shop/formation type ..; max=1", "GET /apps/shop/formation type ]clock..; order=asc, max=1", "GET /apps/shop/formation type ]web..; order=asc, max=1"}
	if strings.Join(formationPages, "|") != strings.Join(want, "|") {
		t.Errorf("formation requests:\n%s\nwant\n%s", strings.Join(formationPages, "\n"), strings.Join(want, "\n"))
	}
	if c.Remaining <= 0 || c.Remaining >= 4500 {
		t.Errorf("RateLimit-Remaining not read: %d", c.Remaining)
	}
}

// A 429 is waited out for as long as Retry-After says, then retried; one
// asking for longer than MaxWait fails with the wait in the error.
func TestClientRetryAfter(t *testing.T) {
	s := standIn(t)
	c := heroku.NewClient(s.URL, "tok")
	var slept []time.Duration
	c.Sleep = func(ctx context.Context, d time.Duration) error { slept = append(slept, d); return nil }
	s.RateLimit(2, 3)
	if _, err := c.App(context.Background(), "shop"); err != nil {
		t.Fatalf("after two 429s: %v", err)
	}
	if len(slept) != 2 || slept[0] != 2*time.Second || slept[1] != 3*time.Second {
		t.Errorf("waited %v; want [2s 3s] as Retry-After said", slept)
	}
	if n := len(s.Requests()); n != 3 {
		t.Errorf("%d requests; want 3 (two refused, one answered)", n)
	}
	s.RateLimit(3600)
	_, err := c.App(context.Background(), "shop")
	var rl *heroku.RateLimitError
	if !errors.As(err, &rl) || rl.RetryAfter != time.Hour || !strings.Contains(err.Error(), "retry after 1h0m0s") {
		t.Errorf("a 429 with Retry-After 3600: %v; want a RateLimitError saying when", err)
	}
}

// A RateLimit-Remaining of 0 makes the client pause before its next
// request rather than be refused.
func TestClientRateLimitRemaining(t *testing.T) {
	s := standIn(t)
	c := heroku.NewClient(s.URL, "tok")
	var slept []time.Duration
	c.Sleep = func(ctx context.Context, d time.Duration) error { slept = append(slept, d); return nil }
	s.SetRemaining(2)
	if _, err := c.App(context.Background(), "shop"); err != nil || len(slept) != 0 || c.Remaining != 1 {
		t.Fatalf("with 1 left: %v, waited %v, remaining %d", err, slept, c.Remaining)
	}
	if _, err := c.App(context.Background(), "shop"); err != nil || len(slept) != 1 || c.Remaining != 0 {
		t.Errorf("with 0 left: %v, waited %v, remaining %d; want one pause", err, slept, c.Remaining)
	}
}

// 401 and 403 say what to do; a Fir app and an app without a slug are
// refused with the reason.
func TestClientErrors(t *testing.T) {
	s := standIn(t)
	ctx := context.Background()
	_, err := heroku.NewClient(s.URL, "wrong").App(ctx, "shop")
	if !heroku.IsStatus(err, http.StatusUnauthorized) || !strings.Contains(err.Error(), "--heroku-token") {
		t.Errorf("bad token: %v", err)
	}
	s.AddApp(herokutest.App{Name: "secret", Region: "us", Stack: "heroku-24", Forbidden: true})
	_, err = heroku.NewClient(s.URL, "tok").App(ctx, "secret")
	if !heroku.IsStatus(err, http.StatusForbidden) || !strings.Contains(err.Error(), "collaborator") {
		t.Errorf("forbidden app: %v", err)
	}
	c := heroku.NewClient(s.URL, "tok")
	s.AddApp(herokutest.App{Name: "fir", Region: "us", Stack: "heroku-24", Generation: "fir"})
	s.ReleaseOCI("fir", "Deploy")
	a, _ := c.App(ctx, "fir")
	r, _ := c.LatestRelease(ctx, "fir")
	if err := heroku.CheckSlugApp(a, r); err == nil || !strings.Contains(err.Error(), "Fir app") {
		t.Errorf("Fir app: %v", err)
	}
	s.AddApp(herokutest.App{Name: "unbuilt", Region: "us", Stack: "heroku-24"})
	s.ReleaseConfig("unbuilt", "Set GREETING config vars")
	a, _ = c.App(ctx, "unbuilt")
	r, _ = c.LatestRelease(ctx, "unbuilt")
	if err := heroku.CheckSlugApp(a, r); err == nil || !strings.Contains(err.Error(), "release v1 has no slug") {
		t.Errorf("app never built: %v", err)
	}
	if _, err := c.LatestRelease(ctx, "shop"); err == nil || !strings.Contains(err.Error(), "no succeeded release") {
		t.Errorf("app never deployed: %v", err)
	}
}

// A slug whose bytes do not match its checksum is refused and removed.
func TestDownloadSlugChecksum(t *testing.T) {
	s := standIn(t)
	s.Release("shop", herokutest.Slug{Tgz: herokutest.MakeSlug(map[string]string{"Procfile": "web: a"}), ProcessTypes: procs,
		Checksum: "SHA256:0000000000000000000000000000000000000000000000000000000000000000"}, "Deploy")
	c := heroku.NewClient(s.URL, "tok")
	ctx := context.Background()
	r, _ := c.LatestRelease(ctx, "shop")
	sl, err := c.Slug(ctx, "shop", r.Slug.ID)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = heroku.DownloadSlug(ctx, nil, sl, dir)
	var ce *heroku.ChecksumError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Fatalf("mismatched slug: %v", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("the bad download was left: %v", left)
	}
	s.Release("shop", herokutest.Slug{Tgz: herokutest.MakeSlug(map[string]string{"Procfile": "web: a"}), ProcessTypes: procs}, "Deploy")
	r, _ = c.LatestRelease(ctx, "shop")
	sl, _ = c.Slug(ctx, "shop", r.Slug.ID)
	if p, err := heroku.DownloadSlug(ctx, nil, sl, dir); err != nil || p == "" {
		t.Errorf("good slug: %q %v", p, err)
	}
}
