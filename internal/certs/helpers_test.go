package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/certs/certstest"
	"github.com/perchhq/perch/internal/store"
)

// newStore runs an embedded NATS for the test and opens the buckets.
func newStore(t *testing.T) *store.Store {
	t.Helper()
	e, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	st, err := store.Open(context.Background(), e.URL(), "tok", t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createApp writes an app record as the server does.
func createApp(t *testing.T, st *store.Store, name string) {
	t.Helper()
	if _, err := store.Create(context.Background(), st.Apps, name, api.App{Name: name, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

// testEdge is the part of an edge that certificates need: a Source, an
// HTTP port that answers HTTP-01 challenges and a TLS port, on loopback.
type testEdge struct {
	src       *Source
	httpAddr  string
	tlsAddr   string
	httpPort  int
	tlsPort   int
	hostID    string
	cancelRun context.CancelFunc
}

// startEdge runs a Source for host hostID (registered as up, so issuers
// wait for its confirmations) with its two ports.
func startEdge(t *testing.T, st *store.Store, hostID string) *testEdge {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if hostID != "" {
		if _, err := store.Put(ctx, st.Hosts, hostID, api.Host{ID: hostID, Region: "iad", Status: api.HostUp}); err != nil {
			t.Fatal(err)
		}
	}
	src := NewSource(SourceConfig{Store: st, HostID: hostID, Log: testLog(t)})
	done := make(chan struct{})
	go func() { defer close(done); _ = src.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-src.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("source not ready in 10s")
	}
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "app answers %s", r.URL.Path) })
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hsrv := &http.Server{Handler: src.HTTPChallenge(app)}
	go func() { _ = hsrv.Serve(hln) }()
	t.Cleanup(func() { hsrv.Close() })
	tln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		GetCertificate: src.GetCertificate,
		NextProtos:     []string{"http/1.1", "acme-tls/1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tsrv := &http.Server{Handler: app}
	go func() { _ = tsrv.Serve(tln) }()
	t.Cleanup(func() { tsrv.Close() })
	return &testEdge{
		src: src, hostID: hostID, cancelRun: cancel,
		httpAddr: hln.Addr().String(), tlsAddr: tln.Addr().String(),
		httpPort: hln.Addr().(*net.TCPAddr).Port, tlsPort: tln.Addr().(*net.TCPAddr).Port,
	}
}

// startPebble runs Pebble validating against e's ports.
func startPebble(t *testing.T, e *testEdge, validity time.Duration) *certstest.Pebble {
	t.Helper()
	return certstest.Start(t, certstest.Options{
		EdgeAddr: netip.MustParseAddr("127.0.0.1"), HTTPPort: e.httpPort, TLSPort: e.tlsPort,
		Validity: validity, Log: testWriter{t},
	})
}

// runManager starts a Manager until the test ends.
func runManager(t *testing.T, st *store.Store, cfg Config) *Manager {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := NewManager(ctx, st, cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// waitStatus waits until host's record leaves pending and returns it.
func waitStatus(t *testing.T, m *Manager, app, host string) api.Certificate {
	t.Helper()
	var rec api.Certificate
	eventually(t, 30*time.Second, host+" leaves pending", func() (bool, string) {
		var err error
		rec, err = m.Get(context.Background(), app, host)
		if err != nil {
			return false, err.Error()
		}
		return rec.Status != StatusPending, rec.Status
	})
	return rec
}

// handshake connects to addr with SNI name, trusting roots, and returns
// the certificate the server showed.
func handshake(addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	certs := c.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, errors.New("no certificate")
	}
	return certs[0], nil
}
