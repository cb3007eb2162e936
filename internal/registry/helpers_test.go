package registry

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const testToken = "perch_test_token"

// testServer is one run of the registry over dir, as the server would mount
// it; restarting means a new testServer over the same dir.
type testServer struct {
	*httptest.Server
	Host string // host:port, as in image references
}

func startRegistry(t *testing.T, dir string) *testServer {
	t.Helper()
	return startRegistryWith(t, dir, Options{})
}

// serve serves reg until the test ends.
func serve(t *testing.T, reg *Registry) *testServer {
	t.Helper()
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	return &testServer{Server: srv, Host: strings.TrimPrefix(srv.URL, "http://")}
}

// ref parses a reference to repo:tag or repo@digest on this server.
func (s *testServer) ref(t *testing.T, suffix string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s.Host + "/" + suffix)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func withToken(tok string) remote.Option {
	return remote.WithAuth(&authn.Basic{Username: "x", Password: tok})
}

// testLogger sends log lines to t.Log and drops them once the test is over,
// when late handler goroutines may still log.
func testLogger(t *testing.T) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *tWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(b, "\n")))
	}
	return len(b), nil
}
