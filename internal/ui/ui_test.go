package ui_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/ui"
)

var (
	csrfFieldRE  = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)
	csrfHeaderRE = regexp.MustCompile(`"X-CSRF-Token": "([0-9a-f]+)"`)
)

type page struct {
	status int
	body   string
	loc    string
}

func get(t *testing.T, c *http.Client, u string, hdr ...string) page {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b), resp.Header.Get("Location")}
}

func post(t *testing.T, c *http.Client, u string, form url.Values, hdr ...string) page {
	t.Helper()
	req, _ := http.NewRequest("POST", u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, string(b), resp.Header.Get("Location")}
}

// login logs c in with tok and returns the session's CSRF token.
func login(t *testing.T, c *http.Client, base, tok string) string {
	t.Helper()
	p := get(t, c, base+"/ui/login")
	m := csrfFieldRE.FindStringSubmatch(p.body)
	if p.status != 200 || m == nil {
		t.Fatalf("login form: %d, no csrf field:\n%s", p.status, p.body)
	}
	p = post(t, c, base+"/ui/login", url.Values{"token": {tok}, "csrf": {m[1]}})
	if p.status != http.StatusSeeOther || p.loc != "/ui/" {
		t.Fatalf("login: %d %q, want 303 to /ui/:\n%s", p.status, p.loc, p.body)
	}
	p = get(t, c, base+"/ui/")
	m = csrfHeaderRE.FindStringSubmatch(p.body)
	if p.status != 200 || m == nil {
		t.Fatalf("dashboard after login: %d:\n%s", p.status, p.body)
	}
	return m[1]
}

func TestLoginSeesOnlyItsOrganisation(t *testing.T) {
	w := startWorld(t, "ams", "syd", "iad")
	ctx := context.Background()
	org := w.orgClient()
	if _, err := org.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	web1 := w.machine("web", "ams", api.StateStarted)
	w.machine("web", "syd", api.StateStopped)
	// Another organisation and its app.
	if _, err := w.admin.CreateOrg(ctx, api.CreateOrgRequest{Slug: "rival"}); err != nil {
		t.Fatal(err)
	}
	rtok, err := w.admin.CreateToken(ctx, "rival", api.CreateTokenRequest{Kind: "org", Name: "rival"})
	if err != nil {
		t.Fatal(err)
	}
	rival := api.NewClient(w.srv.URL(), rtok.Secret)
	if _, err := rival.CreateApp(ctx, api.CreateAppRequest{AppName: "secretapp"}); err != nil {
		t.Fatal(err)
	}
	m, err := rival.CreateMachine(ctx, "secretapp", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i"}})
	if err != nil {
		t.Fatal(err)
	}
	base := w.srv.URL()

	c := browser(t)
	if p := get(t, c, base+"/ui/"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.loc, "/ui/login") {
		t.Fatalf("dashboard without a session: %d %q, want a redirect to the login form", p.status, p.loc)
	}
	// A wrong token is refused on the form, with a reason.
	f := csrfFieldRE.FindStringSubmatch(get(t, c, base+"/ui/login").body)
	if p := post(t, c, base+"/ui/login", url.Values{"token": {"perch_nonsense"}, "csrf": {f[1]}}); p.status != http.StatusUnauthorized || !strings.Contains(p.body, "refused") {
		t.Fatalf("bad token: %d, want 401 saying it was refused:\n%s", p.status, p.body)
	}
	// A login without the form's CSRF token is refused.
	if p := post(t, c, base+"/ui/login", url.Values{"token": {w.orgTok}}); p.status != http.StatusForbidden {
		t.Fatalf("login without csrf: %d, want 403", p.status)
	}

	login(t, c, base, w.orgTok)
	p := get(t, c, base+"/ui/")
	for _, want := range []string{`href="/ui/apps/web"`, `data-region="ams" data-machines="1" data-started="1"`, `data-region="syd" data-machines="1" data-started="0"`, `class="land"`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("dashboard lacks %s", want)
		}
	}
	if strings.Contains(p.body, "secretapp") || strings.Contains(p.body, `data-region="iad" data-machines="1"`) {
		t.Errorf("the personal organisation's dashboard shows the rival's app or its machine")
	}
	p = get(t, c, base+"/ui/apps/web")
	if p.status != 200 || !strings.Contains(p.body, `data-machine="`+web1.ID+`" data-state="started"`) {
		t.Fatalf("app page: %d, lacks machine %s started", p.status, web1.ID)
	}
	for _, u := range []string{"/ui/apps/secretapp", "/ui/apps/secretapp/machines", "/ui/map?app=secretapp", "/ui/apps/secretapp/logs"} {
		p := get(t, c, base+u, "Accept", "text/event-stream")
		if p.status != http.StatusNotFound || strings.Contains(p.body, m.ID) || strings.Contains(p.body, "organisation") {
			t.Errorf("%s for another organisation: %d (want 404, and not its machine id)", u, p.status)
		}
	}

	// The rival sees its own app and not ours.
	rc := browser(t)
	rcsrf := login(t, rc, base, rtok.Secret)
	p = get(t, rc, base+"/ui/")
	if !strings.Contains(p.body, "secretapp") || strings.Contains(p.body, `href="/ui/apps/web"`) {
		t.Errorf("rival's dashboard: wants secretapp and not web")
	}
	// Nor may it act on ours, and the refusal does not tell that web
	// exists.
	if p := post(t, rc, base+"/ui/apps/web/machines/"+web1.ID+"/stop", nil, "X-CSRF-Token", rcsrf); p.status != http.StatusNotFound || strings.Contains(p.body, "organisation") {
		t.Errorf("rival's stop of web's machine: %d %q, want 404 not naming an organisation", p.status, p.body)
	}
	if m, err := org.GetMachine(ctx, "web", web1.ID); err != nil || m.State != api.StateStarted {
		t.Errorf("web's machine after rival's stop: %v %v, want started", m, err)
	}

	// Log out: the session cookie is gone, the dashboard asks to log in,
	// and a copy of the old cookie is refused.
	csrf := csrfHeaderRE.FindStringSubmatch(get(t, c, base+"/ui/").body)[1]
	bu, _ := url.Parse(base + "/ui/")
	old := c.Jar.Cookies(bu)
	if p := post(t, c, base+"/ui/logout", url.Values{"csrf": {csrf}}); p.status != http.StatusSeeOther {
		t.Fatalf("logout: %d", p.status)
	}
	if p := get(t, c, base+"/ui/"); p.status != http.StatusSeeOther {
		t.Fatalf("dashboard after logout: %d, want a redirect to the login form", p.status)
	}
	replay := browser(t)
	replay.Jar.SetCookies(bu, old)
	if p := get(t, replay, base+"/ui/"); p.status != http.StatusSeeOther || !strings.Contains(p.loc, "logged+out") {
		t.Fatalf("a copy of a logged-out session's cookie: %d %q, want a redirect to the login form", p.status, p.loc)
	}
}

func TestCSRFAndActions(t *testing.T) {
	w := startWorld(t, "ams")
	ctx := context.Background()
	if _, err := w.orgClient().CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	m := w.machine("web", "ams", api.StateStarted)
	base := w.srv.URL()
	c := browser(t)
	csrf := login(t, c, base, w.orgTok)
	stop := base + "/ui/apps/web/machines/" + m.ID + "/stop"
	desired := func() string {
		sp, _, err := store.Get[store.MachineSpec](ctx, w.srv.Store().Machines, store.MachineKey("web", m.ID))
		if err != nil {
			t.Fatal(err)
		}
		return sp.Desired
	}
	if p := post(t, c, stop, nil); p.status != http.StatusForbidden || !strings.Contains(p.body, "CSRF") {
		t.Fatalf("stop without a CSRF token: %d, want 403 naming CSRF", p.status)
	}
	if p := post(t, c, stop, url.Values{"csrf": {"0000" + csrf[4:]}}); p.status != http.StatusForbidden {
		t.Fatalf("stop with a wrong CSRF token: %d, want 403", p.status)
	}
	if d := desired(); d != store.DesireStarted {
		t.Fatalf("a refused action changed the machine: desired %s", d)
	}
	// A plain form post (no JavaScript) acts and goes back to the app page.
	if p := post(t, c, stop, url.Values{"csrf": {csrf}}); p.status != http.StatusSeeOther || p.loc != "/ui/apps/web" {
		t.Fatalf("stop: %d %q:\n%s", p.status, p.loc, p.body)
	}
	if d := desired(); d != store.DesireStopped {
		t.Fatalf("after the stop button the machine's desired state is %s", d)
	}
	w.report("web", m.ID, api.StateStopped)
	// htmx's post (header token) gets the machines panel back.
	p := post(t, c, base+"/ui/apps/web/machines/"+m.ID+"/start", nil, "X-CSRF-Token", csrf, "HX-Request", "true")
	if p.status != 200 || !strings.Contains(p.body, `data-machine="`+m.ID+`"`) || strings.Contains(p.body, "<html") {
		t.Fatalf("htmx start: %d, want the machines panel:\n%s", p.status, p.body)
	}
	if d := desired(); d != store.DesireStarted {
		t.Fatalf("after the start button the machine's desired state is %s", d)
	}
}

func TestBadInputIsNotAServerError(t *testing.T) {
	w := startWorld(t, "ams")
	ctx := context.Background()
	if _, err := w.orgClient().CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	base := w.srv.URL()
	c := browser(t)
	csrf := login(t, c, base, w.orgTok)
	long := strings.Repeat("a", 5000)
	cases := []struct {
		method, path string
		want         int
	}{
		{"GET", "/ui/apps/" + long, 404},
		{"GET", "/ui/apps/" + long + "/machines", 404},
		{"GET", "/ui/map?app=" + long, 404},
		{"GET", "/ui/apps/no-such-app", 404},
		{"GET", "/ui/apps/web/logs?region=..%2F", 400},
		{"GET", "/ui/apps/web/logs?machine=%3E", 400},
		{"GET", "/ui/nowhere", 404},
		{"POST", "/ui/apps/web/machines/0123456789abcd/stop", 404},
		{"POST", "/ui/apps/web/machines/NOT..AN..ID/stop", 404},
		{"POST", "/ui/apps/web/machines/0123456789abcd/explode", 404},
		{"POST", "/ui/apps/" + long + "/machines/0123456789abcd/stop", 404},
	}
	for _, tc := range cases {
		var p page
		if tc.method == "GET" {
			p = get(t, c, base+tc.path)
		} else {
			p = post(t, c, base+tc.path, url.Values{"csrf": {csrf}})
		}
		if p.status != tc.want {
			t.Errorf("%s %.80s: %d, want %d:\n%.400s", tc.method, tc.path, p.status, tc.want, p.body)
		}
		if !strings.Contains(p.body, "<html") && !strings.Contains(p.body, "class=\"error\"") {
			t.Errorf("%s %.80s: the answer is not a page a person can read: %.200s", tc.method, tc.path, p.body)
		}
	}
}

// TestForgedAndExpiredSessions runs the dashboard on a clock of the
// test's, in front of the real server's API.
func TestForgedAndExpiredSessions(t *testing.T) {
	w := startWorld(t, "ams")
	target, _ := url.Parse(w.srv.URL())
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	secret := make([]byte, 32)
	rand.Read(secret)
	d, err := ui.New(ui.Config{API: httputil.NewSingleHostReverseProxy(target), Store: w.srv.Store(), Secret: secret, SessionTTL: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(d)
	t.Cleanup(hs.Close)
	c := browser(t)
	login(t, c, hs.URL, w.orgTok)
	u, _ := url.Parse(hs.URL + "/ui/")
	real := c.Jar.Cookies(u)[0]
	if real.Name != "perch_ui_session" {
		t.Fatalf("cookie %s", real.Name)
	}
	// The cookie's attributes, as sent.
	resp := rawLogin(t, hs.URL, w.orgTok, false)
	for _, want := range []string{"HttpOnly", "SameSite=Strict", "Path=/ui/"} {
		if !strings.Contains(resp, want) {
			t.Errorf("session cookie lacks %s: %s", want, resp)
		}
	}
	if strings.Contains(resp, "Secure") {
		t.Errorf("session cookie over plain HTTP is Secure (a browser would drop it): %s", resp)
	}
	// Behind a TLS-terminating proxy the cookie is Secure.
	if resp := rawLogin(t, hs.URL, w.orgTok, true); !strings.Contains(resp, "Secure") {
		t.Errorf("session cookie over HTTPS lacks Secure: %s", resp)
	}

	forged := []string{
		"not-a-cookie",
		base64.RawURLEncoding.EncodeToString(make([]byte, 80)),
		flip(real.Value),
	}
	for _, v := range forged {
		fc := browser(t)
		fc.Jar.SetCookies(u, []*http.Cookie{{Name: "perch_ui_session", Value: v, Path: "/ui/"}})
		if p := get(t, fc, hs.URL+"/ui/"); p.status != http.StatusSeeOther || !strings.HasPrefix(p.loc, "/ui/login") {
			t.Errorf("forged cookie %.20s…: %d %q, want a redirect to the login form", v, p.status, p.loc)
		}
		if p := get(t, fc, hs.URL+"/ui/apps", "HX-Request", "true"); p.status != http.StatusUnauthorized {
			t.Errorf("forged cookie on a panel: %d, want 401", p.status)
		}
	}
	if p := get(t, c, hs.URL+"/ui/"); p.status != 200 {
		t.Fatalf("valid session: %d", p.status)
	}
	mu.Lock()
	now = now.Add(time.Hour + time.Second)
	mu.Unlock()
	if p := get(t, c, hs.URL+"/ui/"); p.status != http.StatusSeeOther || !strings.Contains(p.loc, "expired") {
		t.Fatalf("expired session: %d %q, want a redirect to the login form saying it expired", p.status, p.loc)
	}
}

// rawLogin logs in and returns the Set-Cookie headers of the answer.
func rawLogin(t *testing.T, base, tok string, https bool) string {
	c := browser(t)
	p := get(t, c, base+"/ui/login")
	m := csrfFieldRE.FindStringSubmatch(p.body)
	req, _ := http.NewRequest("POST", base+"/ui/login", strings.NewReader(url.Values{"token": {tok}, "csrf": {m[1]}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if https {
		req.Header.Set("X-Forwarded-Proto", "https")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return strings.Join(resp.Header.Values("Set-Cookie"), "\n")
}

func flip(s string) string {
	b := []byte(s)
	i := len(b) / 2
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// TestLiveUpdates: a change in the store reaches an open page's event
// stream, and log lines reach the log stream.
func TestLiveUpdates(t *testing.T) {
	w := startWorld(t, "ams")
	ctx := context.Background()
	if _, err := w.orgClient().CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	m := w.machine("web", "ams", api.StateStarted)
	base := w.srv.URL()
	c := browser(t)
	login(t, c, base, w.orgTok)
	c.Timeout = 0

	events := openStream(t, c, base+"/ui/events?app=web")
	if events.waitFor(t, "event: changed", 10*time.Second) == "" {
		t.Fatal("no refresh when the event stream opened")
	}
	if err := w.orgClient().StopMachine(ctx, "web", m.ID, nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if line := events.waitFor(t, "event: changed", 10*time.Second); line == "" {
		t.Fatal("no change event after a machine was stopped through the API")
	}
	t.Logf("change event %v after the stop", time.Since(start))

	logs := openStream(t, c, base+"/ui/apps/web/logs?machine="+m.ID)
	w.logLine("web", "ams", m.ID, "hello <b>from</b> the machine")
	if line := logs.waitFor(t, "hello &lt;b&gt;from&lt;/b&gt; the machine", 10*time.Second); !strings.HasPrefix(line, "data: <div class=\"logline\">") {
		t.Fatalf("log line as an event: %q", line)
	}
}

type stream struct{ lines chan string }

func openStream(t *testing.T, c *http.Client, u string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("%s: %d %s", u, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &stream{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s
}

func (s *stream) waitFor(t *testing.T, sub string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return ""
			}
			if strings.Contains(l, sub) {
				return l
			}
		case <-deadline:
			return ""
		}
	}
}

// TestMapArcsAndRoundTrips: the edges' demand reports (perch.demand.*, as
// an edge publishes them) become arcs from the edge region to the serving
// region, and the hosts' state and measured round trips show per region.
func TestMapArcsAndRoundTrips(t *testing.T) {
	w := startWorld(t, "ams", "syd")
	ctx := context.Background()
	if _, err := w.orgClient().CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	w.machine("web", "ams", api.StateStarted)
	if _, err := store.Modify(ctx, w.srv.Store().Hosts, w.hosts["ams"], func(h *api.Host) error {
		h.RTT = map[string]float64{w.hosts["syd"]: 241.4}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Modify(ctx, w.srv.Store().Hosts, w.hosts["syd"], func(h *api.Host) error {
		h.Status = "down"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	base := w.srv.URL()
	c := browser(t)
	login(t, c, base, w.orgTok)
	c.Timeout = 0
	events := openStream(t, c, base+"/ui/events?app=web")
	if events.waitFor(t, "event: changed", 10*time.Second) == "" {
		t.Fatal("no refresh when the event stream opened")
	}

	rep := store.DemandReport{Region: "syd", HostID: w.hosts["syd"], At: time.Now(), Interval: 2,
		Apps: []store.AppDemand{{App: "web", RPS: 40, Concurrency: 2, ServedBy: map[string]int64{"ams": 60, "syd": 20}}}}
	b, _ := json.Marshal(rep)
	deadline := time.Now().Add(15 * time.Second)
	var p page
	for {
		if err := w.srv.Store().Conn().Publish(store.DemandSubject("syd", w.hosts["syd"]), b); err != nil {
			t.Fatal(err)
		}
		p = get(t, c, base+"/ui/map?app=web", "HX-Request", "true")
		if strings.Contains(p.body, `class="arc" data-from="syd" data-to="ams"`) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, want := range []string{`class="arc" data-from="syd" data-to="ams"`, "syd → ams: 30.0 req/s", "syd → syd: 10.0 req/s", "syd 241 ms",
		`class="region up" data-region="ams"`, `class="region down" data-region="syd"`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("map lacks %q:\n%.2000s", want, p.body)
		}
	}
	if events.waitFor(t, "event: changed", 10*time.Second) == "" {
		t.Error("no change event for the new demand")
	}
}
