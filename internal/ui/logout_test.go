package ui_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/server"
)

// TestLogoutSurvivesRestart: a logged-out session's cookie stays refused
// after the control plane restarts (the logout is recorded in the store,
// not only in the process), while another session of the same token,
// not logged out, still opens the dashboard.
func TestLogoutSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s1, stop := startServer(t, dir)
	ctx := context.Background()
	tok, err := api.NewClient(s1.URL(), s1.AdminToken()).CreateToken(ctx, server.DefaultOrg, api.CreateTokenRequest{Kind: "org", Name: "ui-test"})
	if err != nil {
		t.Fatal(err)
	}
	kept, gone := browser(t), browser(t)
	login(t, kept, s1.URL(), tok.Secret)
	csrf := login(t, gone, s1.URL(), tok.Secret)
	u1, _ := url.Parse(s1.URL() + "/ui/")
	keptCookies, goneCookies := kept.Jar.Cookies(u1), gone.Jar.Cookies(u1)
	if p := post(t, gone, s1.URL()+"/ui/logout", url.Values{"csrf": {csrf}}); p.status != http.StatusSeeOther {
		t.Fatalf("logout: %d:\n%s", p.status, p.body)
	}
	stop()

	s2, _ := startServer(t, dir)
	u2, _ := url.Parse(s2.URL() + "/ui/")
	replay := browser(t)
	replay.Jar.SetCookies(u2, goneCookies)
	if p := get(t, replay, s2.URL()+"/ui/"); p.status != http.StatusSeeOther || !strings.Contains(p.loc, "logged+out") {
		t.Errorf("a logged-out session's cookie after a restart: %d %q, want a redirect to the login form saying it was logged out", p.status, p.loc)
	}
	if p := get(t, replay, s2.URL()+"/ui/map", "HX-Request", "true"); p.status != http.StatusUnauthorized {
		t.Errorf("a logged-out session's cookie on a panel after a restart: %d, want 401", p.status)
	}
	still := browser(t)
	still.Jar.SetCookies(u2, keptCookies)
	if p := get(t, still, s2.URL()+"/ui/"); p.status != http.StatusOK {
		t.Errorf("a session not logged out, after a restart: %d %q, want the dashboard", p.status, p.loc)
	}
}

// TestSessionCheckWithoutStore: when the store cannot say whether a
// session was logged out (its bucket gone), the page says the dashboard
// cannot reach its store (503), rather than opening, or sending the user
// to the login form with the cookie thrown away.
func TestSessionCheckWithoutStore(t *testing.T) {
	w := startWorld(t)
	c := browser(t)
	login(t, c, w.srv.URL(), w.orgTok)
	if err := w.srv.Store().JetStream().DeleteKeyValue(context.Background(), "perch_ui_sessions"); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", w.srv.URL()+"/ui/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a session the store cannot check: %d, want 503", resp.StatusCode)
	}
	for _, sc := range resp.Cookies() {
		if sc.Name == "perch_ui_session" {
			t.Errorf("the session cookie was replaced (%q, max-age %d) although the session may still be good", sc.Value, sc.MaxAge)
		}
	}
}
