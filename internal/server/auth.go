package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

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

func (s *Server) validToken(tok string) (store.Token, bool) {
	if tok == "" {
		return store.Token{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t, _, err := store.Get[store.Token](ctx, s.st.Tokens, tokenKey(tok))
	return t, err == nil
}

type tokenNameKey struct{}

// tokenName is the name of the token that authorised r ("admin", ...).
func tokenName(r *http.Request) string {
	n, _ := r.Context().Value(tokenNameKey{}).(string)
	return n
}

// requireToken rejects requests without a valid bearer token.
func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Get("Authorization")
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok || tok == "" {
			writeError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token> (perch auth login stores one)")
			return
		}
		t, ok := s.validToken(strings.TrimSpace(tok))
		if !ok {
			writeError(w, http.StatusUnauthorized, "invalid token: it is not known to this server; run perch auth login with a current token")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenNameKey{}, t.Name)))
	})
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
