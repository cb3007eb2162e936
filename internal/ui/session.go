package ui

import (
	"context"
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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/store"
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
	if out, err := u.loggedOut(r.Context(), s.ID); err != nil {
		return nil, err
	} else if out {
		return nil, errors.New("logged out")
	}
	return &s, nil
}

// revoked is the record of logged-out sessions, so that a copy of a
// logged-out cookie stays refused by every control plane and after a
// restart: a key per session in the bucket perch_ui_sessions
// (BucketSessions, "out.<session id>"), whose TTL is a session's life, so
// a record goes once its cookie would have expired anyway. The ids logged
// out through this process are also kept in memory, the fast path.
type revoked struct {
	kv  jetstream.KeyValue
	mu  sync.Mutex
	ids map[string]time.Time
}

// BucketSessions holds the dashboard's logged-out sessions.
const BucketSessions = "perch_ui_sessions"

func openRevoked(ctx context.Context, st *store.Store, ttl time.Duration) (*revoked, error) {
	// A minute more than a session lives: clocks of several control
	// planes differ a little. EnsureBucket: as many copies as the
	// cluster keeps of every bucket.
	kv, err := st.EnsureBucket(ctx, jetstream.KeyValueConfig{Bucket: BucketSessions, History: 1, TTL: ttl + time.Minute, Storage: jetstream.FileStorage})
	if err != nil {
		return nil, fmt.Errorf("ui: %w", err)
	}
	return &revoked{kv: kv, ids: map[string]time.Time{}}, nil
}

// errSessionUnchecked: the store could not say whether a session was
// logged out. The session is refused for now, and its cookie kept.
var errSessionUnchecked = errors.New("cannot check whether this session was logged out")

func revokedKey(id string) string { return "out." + id }

// logOut records s as logged out. The cookie is cleared either way; an
// error means only this process remembers.
func (u *UI) logOut(ctx context.Context, s *session) error {
	rv := u.revoked
	rv.mu.Lock()
	now := u.now()
	for id, exp := range rv.ids {
		if !now.Before(exp) {
			delete(rv.ids, id)
		}
	}
	rv.ids[s.ID] = s.Expires
	rv.mu.Unlock()
	if _, err := rv.kv.Put(ctx, revokedKey(s.ID), []byte(s.Expires.UTC().Format(time.RFC3339))); err != nil {
		return fmt.Errorf("recording the logout in %s: %w", BucketSessions, err)
	}
	return nil
}

// loggedOut says whether session id was logged out, here or by any
// control plane sharing the store. When the store cannot say, the
// session is refused (an error): the dashboard needs the store for every
// page anyway.
func (u *UI) loggedOut(ctx context.Context, id string) (bool, error) {
	rv := u.revoked
	rv.mu.Lock()
	_, ok := rv.ids[id]
	rv.mu.Unlock()
	if ok {
		return true, nil
	}
	_, err := rv.kv.Get(ctx, revokedKey(id))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	default:
		return true, fmt.Errorf("%w: %w", errSessionUnchecked, err)
	}
}

// checkCSRF compares the form field or header with the session's value.
func checkCSRF(r *http.Request, want string) bool {
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	return got != "" && hmac.Equal([]byte(got), []byte(want))
}
