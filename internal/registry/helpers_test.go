package registry

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/perchhq/perch/internal/store"
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

// testShared is the test's registry state: one embedded NATS per test,
// which every registry the test starts (a restart) shares.
func testShared(t *testing.T) Shared {
	t.Helper()
	if v, ok := sharedByTest.Load(t); ok {
		return v.(Shared)
	}
	e, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	st, err := store.OpenAs(context.Background(), e.URL(), store.Auth{User: store.ServerUser, Password: "tok"}, "registry-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	sh := sharedOf(st)
	sharedByTest.Store(t, sh)
	t.Cleanup(func() { sharedByTest.Delete(t) })
	return sh
}

var sharedByTest sync.Map // *testing.T → Shared

// sharedOf is the registry state in st, as the server passes it.
func sharedOf(st *store.Store) Shared {
	return Shared{JS: st.JetStream(), Blobs: st.Registry, Stream: store.StreamRegistry, Subject: store.SubjectRegistry}
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
