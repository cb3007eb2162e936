package server

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/store"
)

// ensureAdminToken creates the admin token on first start and writes it to
// DataDir/admin-token (mode 0600). Later starts read it back.
func (s *Server) ensureAdminToken(ctx context.Context) error {
	s.tokPath = filepath.Join(s.cfg.DataDir, "admin-token")
	b, err := os.ReadFile(s.tokPath)
	switch {
	case err == nil:
		s.adminTok = strings.TrimSpace(string(b))
		if _, _, err := store.Get[store.Token](ctx, s.st.Tokens, tokenKey(s.adminTok)); err == nil {
			return nil
		}
		// The file survived but the store did not (a new external NATS):
		// register the same token again.
	case errors.Is(err, os.ErrNotExist):
		s.adminTok = "perch_" + randHex(24)
	default:
		return fmt.Errorf("server: read admin token: %w", err)
	}
	t := store.Token{ID: randHex(6), Hash: tokenKey(s.adminTok), Name: "admin", CreatedAt: time.Now().UTC()}
	if _, err := store.Put(ctx, s.st.Tokens, t.Hash, t); err != nil {
		return fmt.Errorf("server: store admin token: %w", err)
	}
	if err := writeFileAtomic(s.tokPath, []byte(s.adminTok+"\n"), 0o600); err != nil {
		return fmt.Errorf("server: write admin token: %w", err)
	}
	s.log.Info("created admin token", "path", s.tokPath)
	return nil
}

func tokenKey(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

func (s *Server) validToken(ctx context.Context, tok string) (store.Token, error) {
	if tok == "" {
		return store.Token{}, store.ErrNotFound
	}
	var t store.Token
	err := s.readThroughElection(ctx, func(ctx context.Context) (err error) {
		t, _, err = store.Get[store.Token](ctx, s.st.Tokens, tokenKey(tok))
		return err
	})
	return t, err
}

// openTokens loads (or creates) the key organisations' tokens are signed
// with: DataDir/token-key, mode 0600. It never goes to the store, so a
// reader of the store cannot mint a token.
func (s *Server) openTokens() error {
	path := filepath.Join(s.cfg.DataDir, "token-key")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := writeFileAtomic(path, []byte(randHex(32)+"\n"), 0o600); err != nil {
			return fmt.Errorf("server: token signing key: %w", err)
		}
	}
	sec, err := readOrCreateSecret(path)
	if err != nil {
		return fmt.Errorf("server: token signing key: %w", err)
	}
	key, err := hex.DecodeString(sec)
	if err != nil {
		return fmt.Errorf("server: token signing key %s is damaged (%w); restore it from a backup (every organisation token depends on it)", path, err)
	}
	s.tokens, err = auth.NewAuthority(key)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

type principalKey struct{}

// principalOf is the principal a request was authorised as (set by guard).
func principalOf(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey{}).(auth.Principal)
	return p
}

// tokenName is who the request acts for, for records: "admin", a member's
// name, a token's name.
func tokenName(r *http.Request) string { return principalOf(r).Name }

// bearer is the token of an Authorization header: "Bearer <token>" (Perch's
// and Fly's clients) or "FlyV1 <token>" (flyctl's newer scheme).
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !(strings.EqualFold(scheme, "Bearer") || strings.EqualFold(scheme, "FlyV1")) {
		return ""
	}
	return strings.TrimSpace(tok)
}

// principal resolves the request's bearer token to who it acts for. It is
// the one place a credential becomes a principal: the admin token, an
// organisation's macaroon (verified, caveats read, its root id checked
// against the store so a revocation holds at once), and (hostauth.go) a
// host's credential. Errors are 401s that say what to do.
func (s *Server) principal(r *http.Request) (auth.Principal, error) {
	tok := bearer(r)
	if tok == "" {
		return auth.Principal{}, errf(http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token> (perch auth login stores one)")
	}
	return s.principalFor(r.Context(), tok)
}

// principalFor resolves a token however it arrived (bearer, or the
// registry's basic-auth password).
func (s *Server) principalFor(ctx context.Context, tok string) (auth.Principal, error) {
	if auth.IsMacaroon(tok) {
		return s.orgPrincipal(ctx, tok)
	}
	if isHostCredential(tok) {
		return s.hostPrincipal(ctx, tok)
	}
	t, err := s.validToken(ctx, tok)
	if err == nil {
		return auth.Principal{Kind: auth.KindAdmin, Name: t.Name}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		// Not "unknown": the store did not answer (a 503 while a
		// cluster elects a leader or has lost its quorum).
		return auth.Principal{}, fmt.Errorf("look up the token: %w", err)
	}
	return auth.Principal{}, errf(http.StatusUnauthorized, "invalid token: it is not known to this server; run perch auth login with a current token")
}

func (s *Server) orgPrincipal(ctx context.Context, tok string) (auth.Principal, error) {
	id, restr, err := s.tokens.Verify(tok, time.Now())
	if err != nil {
		return auth.Principal{}, errf(http.StatusUnauthorized, "invalid token: %v; ask your organisation for a new one (perch tokens create)", err)
	}
	var rec auth.TokenRecord
	err = s.readThroughElection(ctx, func(ctx context.Context) (err error) {
		rec, _, err = store.Get[auth.TokenRecord](ctx, s.st.Tokens, auth.RecordKey(id))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return auth.Principal{}, errf(http.StatusUnauthorized, "token %s has been revoked; ask your organisation for a new one (perch tokens create)", id)
	}
	if err != nil {
		return auth.Principal{}, fmt.Errorf("look up token %s: %w", id, err)
	}
	if !rec.Expires.IsZero() && !time.Now().Before(rec.Expires) {
		return auth.Principal{}, errf(http.StatusUnauthorized, "token %s expired at %s; ask your organisation for a new one (perch tokens create)", id, rec.Expires.Format(time.RFC3339))
	}
	name := cmp.Or(rec.Member, rec.Name, rec.Kind+"-token-"+id)
	return auth.Principal{Kind: auth.KindOrg, Org: rec.Org, TokenID: id, Name: name, Restrictions: restr}, nil
}

// guard resolves the principal and checks it against the route's scope
// before h runs.
func (s *Server) guard(sc scope, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.principal(r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := s.authorize(r, sc, p); err != nil {
			s.fail(w, r, err)
			return
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// authorize says whether p may make request r to a route of scope sc.
func (s *Server) authorize(r *http.Request, sc scope, p auth.Principal) error {
	what := r.Method + " " + r.URL.Path
	switch p.Kind {
	case auth.KindAdmin:
		return nil
	case auth.KindHost:
		if sc == scopeAgent {
			return nil
		}
		return errf(http.StatusForbidden, "%s: a host credential reaches only the agent's routes", what)
	case auth.KindOrg:
	default:
		return errf(http.StatusForbidden, "%s: this credential's kind %q may not use the API", what, p.Kind)
	}
	write := r.Method != http.MethodGet && r.Method != http.MethodHead
	if write && p.ReadOnly {
		return errf(http.StatusForbidden, "%s: this token is read-only (readonly caveat); use a token that may write", what)
	}
	regionWrite := write && len(p.Regions) > 0
	switch sc {
	case scopeAny, scopeOrgList:
		return nil
	case scopeApps:
		if regionWrite {
			return errf(http.StatusForbidden, "%s: this token is narrowed to region %s and may only act on machines there", what, strings.Join(p.Regions, ","))
		}
		return nil // createApp and listApps check the org and app themselves
	case scopeApp:
		return s.authorizeApp(r, p, what, regionWrite)
	case scopeOrg, scopeOrgAdmin:
		org := r.PathValue("org")
		if org != p.Org {
			return errf(http.StatusForbidden, "%s: organisation %q is not your token's (%q)", what, org, p.Org)
		}
		if p.AppBound() {
			return errf(http.StatusForbidden, "%s: this token is narrowed to app %s and reaches only that app's routes", what, strings.Join(p.Apps, ","))
		}
		if regionWrite {
			return errf(http.StatusForbidden, "%s: this token is narrowed to region %s and may only act on machines there", what, strings.Join(p.Regions, ","))
		}
		if sc == scopeOrgAdmin && (p.ReadOnly || len(p.Regions) > 0) {
			return errf(http.StatusForbidden, "%s: managing an organisation's members and tokens needs a token with no app, region or readonly caveat", what)
		}
		return nil
	default: // scopeAdmin, scopeAgent
		return errf(http.StatusForbidden, "%s is the operator's: it needs the admin token (in the server's data dir), not an organisation's", what)
	}
}

func (s *Server) authorizeApp(r *http.Request, p auth.Principal, what string, regionWrite bool) error {
	name := r.PathValue("app")
	if !p.AllowsApp(name) {
		return errf(http.StatusForbidden, "%s: this token is narrowed to app %s; use a token for app %s", what, strings.Join(p.Apps, ","), name)
	}
	a, err := s.app(r.Context(), name)
	if err != nil {
		return err
	}
	if a.Org != p.Org {
		return errf(http.StatusForbidden, "%s: app %s belongs to another organisation than your token's (%q)", what, name, p.Org)
	}
	if !regionWrite {
		return nil
	}
	region, err := s.machineRegion(r)
	if err != nil {
		return err
	}
	if region == "" || !p.AllowsRegion(region) {
		return errf(http.StatusForbidden, "%s: this token is narrowed to region %s and may only act on machines there (name the region when creating one)", what, strings.Join(p.Regions, ","))
	}
	return nil
}

// machineRegion is the region a machine write acts in: the machine's own,
// or the region a new machine asks for. Other writes have none.
func (s *Server) machineRegion(r *http.Request) (string, error) {
	if id := r.PathValue("id"); id != "" && strings.Contains(r.Pattern, "/machines/{id}") {
		sp, err := s.spec(r.Context(), r.PathValue("app"), id)
		if err != nil {
			return "", err
		}
		return sp.Region, nil
	}
	if r.Pattern == "POST /v1/apps/{app}/machines" {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return "", errf(http.StatusBadRequest, "read request body: %v", err)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		var req struct {
			Region string `json:"region"`
		}
		_ = json.Unmarshal(b, &req) // the handler reports a bad body
		return req.Region, nil
	}
	return "", nil
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

func readOrCreateSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	sec := randHex(24)
	if err := writeFileAtomic(path, []byte(sec+"\n"), 0o600); err != nil {
		return "", err
	}
	return sec, nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
