package ui

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// loginState is the login form's own CSRF value, in a sealed cookie of
// its own until a session exists.
type loginState struct {
	CSRF    string    `json:"c"`
	Expires time.Time `json:"e"`
}

const loginFormTTL = time.Hour

func urlQuery(s string) string { return url.QueryEscape(s) }

func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	u.showLogin(w, r, http.StatusOK, r.URL.Query().Get("why"))
}

func (u *UI) showLogin(w http.ResponseWriter, r *http.Request, status int, msg string) {
	st := loginState{CSRF: randToken(), Expires: u.now().Add(loginFormTTL)}
	val, err := u.seal.seal(loginCookie, st)
	if err != nil {
		u.errorPage(w, r, http.StatusInternalServerError, "cannot make a login form: "+err.Error())
		return
	}
	setCookie(w, r, loginCookie, val, loginFormTTL)
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	u.render(w, r, status, "login", nil, map[string]any{"CSRF": st.CSRF, "Error": msg})
}

// login checks the posted token with the API (GET /v1/whoami, the same
// check every /v1 route makes) and starts a session.
func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	var st loginState
	c, err := r.Cookie(loginCookie)
	if err != nil || u.seal.open(loginCookie, c.Value, &st) != nil || !u.now().Before(st.Expires) || !checkCSRF(r, st.CSRF) {
		u.errorPage(w, r, http.StatusForbidden, "This login was refused: the form's CSRF token is missing or old. Open the login page again.")
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	if tok == "" {
		u.showLogin(w, r, http.StatusBadRequest, "Paste a token: perch auth token prints yours, or the admin token in the server's data dir.")
		return
	}
	if len(tok) > 8192 {
		u.showLogin(w, r, http.StatusBadRequest, "That is not a Perch token (it is longer than any token).")
		return
	}
	who, err := u.client(tok).Whoami(r.Context())
	if err != nil {
		msg := "That token was refused: " + err.Error()
		u.showLogin(w, r, http.StatusUnauthorized, msg)
		return
	}
	if who.Kind != "admin" && who.Kind != "org" {
		u.showLogin(w, r, http.StatusForbidden, "A "+who.Kind+" credential cannot open the dashboard; use an organisation's token.")
		return
	}
	sess := session{ID: randToken(), Token: tok, CSRF: randToken(), Who: who.Name, Org: who.Org, Admin: who.Kind == "admin", Expires: u.now().Add(u.cfg.SessionTTL)}
	val, err := u.seal.seal(sessionCookie, sess)
	if err != nil {
		u.errorPage(w, r, http.StatusInternalServerError, "cannot start a session: "+err.Error())
		return
	}
	setCookie(w, r, sessionCookie, val, u.cfg.SessionTTL)
	setCookie(w, r, loginCookie, "", -1)
	u.log.Info("dashboard login", "who", who.Name, "org", who.Org, "kind", who.Kind)
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request, sess *session, _ *api.Client) {
	setCookie(w, r, sessionCookie, "", -1)
	if err := u.logOut(r.Context(), sess); err != nil {
		// The browser forgets the cookie; a copy of it would still open
		// the dashboard on another control plane or after a restart.
		u.log.Error("dashboard logout not recorded", "who", sess.Who, "err", err)
		u.errorPage(w, r, http.StatusServiceUnavailable, "You are logged out in this browser, but the server could not record it ("+err.Error()+"), so a copy of this session's cookie would still work until it expires. Log in and out again once the server is back.")
		return
	}
	http.Redirect(w, r, "/ui/login?why=logged+out", http.StatusSeeOther)
}
