package ui

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Cookie names. The session cookie holds the sealed session; the login
// cookie holds the CSRF value of the login form before there is a session.
const (
	sessionCookie = "perch_ui_session"
	loginCookie   = "perch_ui_login"
)

// session is what the sealed cookie carries. The token is the API token
// the user logged in with: every page is drawn from API calls made with
// it, so the dashboard sees exactly what the token may see.
type session struct {
	ID      string    `json:"i"`
	Token   string    `json:"t"`
	CSRF    string    `json:"c"`
	Who     string    `json:"w"`
	Org     string    `json:"o,omitempty"`
	Admin   bool      `json:"a,omitempty"`
	Expires time.Time `json:"e"`
}

// sealer seals cookies with AES-256-GCM under a key derived from the
// server's secret: a cookie that was not made here, or was changed, does
// not open.
type sealer struct{ aead cipher.AEAD }

func newSealer(secret []byte) (*sealer, error) {
	if len(secret) < 16 {
		return nil, errors.New("ui: the session secret must be at least 16 bytes")
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("perch ui session v1"))
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(name string, v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	// The cookie's name is the associated data: a login cookie cannot be
	// replayed as a session.
	out := s.aead.Seal(nonce, nonce, b, []byte(name))
	return base64.RawURLEncoding.EncodeToString(out), nil
}

func (s *sealer) open(name, val string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(val)
	if err != nil {
		return errors.New("cookie is not base64")
	}
	n := s.aead.NonceSize()
	if len(b) < n {
		return errors.New("cookie is too short")
	}
	plain, err := s.aead.Open(nil, b[:n], b[n:], []byte(name))
	if err != nil {
		return errors.New("cookie was not sealed by this server")
	}
	return json.Unmarshal(plain, v)
}

func randToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// setCookie writes a cookie scoped to /ui/: HttpOnly, SameSite=Strict,
// Secure when the request came over TLS (directly or, per
// X-Forwarded-Proto, through a proxy the operator put in front).
func setCookie(w http.ResponseWriter, r *http.Request, name, val string, maxAge time.Duration) {
	c := &http.Cookie{Name: name, Value: val, Path: "/ui/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: isTLS(r), MaxAge: int(maxAge / time.Second)}
	if maxAge < 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

func isTLS(r *http.Request) bool {
	return r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

// sessionOf opens the request's session; an absent, forged or expired
// cookie is no session.
func (u *UI) sessionOf(r *http.Request) (*session, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil, errors.New("not logged in")
	}
	var s session
	if err := u.seal.open(sessionCookie, c.Value, &s); err != nil {
		return nil, err
	}
	if !u.now().Before(s.Expires) {
		return nil, errors.New("session expired")
	}
	if s.Token == "" || s.CSRF == "" || s.ID == "" {
		return nil, errors.New("session is incomplete")
	}
	if u.loggedOut(s.ID) {
		return nil, errors.New("logged out")
	}
	return &s, nil
}

// revoked remembers the sessions logged out since this process started,
// until they would have expired: a copy of a logged-out cookie is refused
// (by this server; a restart forgets, and the cookie's own expiry still
// holds).
type revoked struct {
	mu  sync.Mutex
	ids map[string]time.Time
}

func (u *UI) logOut(s *session) {
	u.revoked.mu.Lock()
	defer u.revoked.mu.Unlock()
	now := u.now()
	for id, exp := range u.revoked.ids {
		if !now.Before(exp) {
			delete(u.revoked.ids, id)
		}
	}
	u.revoked.ids[s.ID] = s.Expires
}

func (u *UI) loggedOut(id string) bool {
	u.revoked.mu.Lock()
	defer u.revoked.mu.Unlock()
	_, ok := u.revoked.ids[id]
	return ok
}

// checkCSRF compares the form field or header with the session's value.
func checkCSRF(r *http.Request, want string) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && hmac.Equal([]byte(got), []byte(want))
}
