package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// TestIssueHTTP01 issues a certificate against Pebble through the HTTP-01
// challenge, answered by the edge from memory, and the edge serves it.
func TestIssueHTTP01(t *testing.T) { testIssue(t, ChallengeHTTP01) }

// TestIssueTLSALPN01 does the same through TLS-ALPN-01, answered by the
// edge's GetCertificate.
func TestIssueTLSALPN01(t *testing.T) { testIssue(t, ChallengeTLSALPN01) }

func testIssue(t *testing.T, challengeType string) {
	ctx := context.Background()
	st := newStore(t)
	edge := startEdge(t, st, "iad-1")
	pebble := startPebble(t, edge, 0)
	m := runManager(t, st, Config{ACME: ACMEConfig{Directory: pebble.Directory, Roots: pebble.Roots, Challenges: []string{challengeType}}})
	createApp(t, st, "web")

	rec, err := m.Add(ctx, "web", "WWW.Example.test.")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Hostname != "www.example.test" || rec.Status != StatusPending || rec.Source != SourceACME {
		t.Fatalf("Add returned %+v; want a pending acme record for www.example.test", rec)
	}
	rec = waitStatus(t, m, "web", "www.example.test")
	if rec.Status != StatusIssued {
		t.Fatalf("certificate not issued: %+v", rec)
	}
	if time.Until(rec.NotAfter) < time.Hour || !strings.Contains(rec.Issuer, "Pebble") {
		t.Errorf("record does not describe the certificate: %+v", rec)
	}

	eventually(t, 10*time.Second, "edge serves the certificate", func() (bool, string) {
		c, err := handshake(edge.tlsAddr, "www.example.test", pebble.IssuerRoots())
		if err != nil {
			return false, err.Error()
		}
		if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("certificate key is %T; want ECDSA P-256", c.PublicKey)
		}
		return slices.Equal(c.DNSNames, []string{"www.example.test"}), strings.Join(c.DNSNames, ",")
	})
	if n := pebble.Issued(); n != 1 {
		t.Errorf("Pebble issued %d certificates; want 1", n)
	}
	a, _, err := store.Get[api.App](ctx, st.Apps, "web")
	if err != nil || !slices.Contains(a.Hostnames, "www.example.test") {
		t.Errorf("app does not route the hostname: %+v %v", a, err)
	}
	// The challenge and its confirmations are gone.
	keys, _ := st.Challenges.ListKeys(ctx)
	for k := range keys.Keys() {
		t.Errorf("challenge key left behind: %s", k)
	}

	// Adding it again changes nothing.
	again, err := m.Add(ctx, "web", "www.example.test")
	if err != nil || again.Status != StatusIssued {
		t.Errorf("adding again: %+v %v; want the issued record", again, err)
	}
	if n := pebble.Issued(); n != 1 {
		t.Errorf("after adding again Pebble issued %d certificates; want 1", n)
	}

	// Removing it: the edge stops serving it and the app stops routing it.
	if err := m.Remove(ctx, "web", "www.example.test"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "edge stops serving the certificate", func() (bool, string) {
		_, err := edge.src.GetCertificate(&tls.ClientHelloInfo{ServerName: "www.example.test"})
		return err != nil, "still served"
	})
	a, _, _ = store.Get[api.App](ctx, st.Apps, "web")
	if slices.Contains(a.Hostnames, "www.example.test") {
		t.Errorf("app still routes the removed hostname: %v", a.Hostnames)
	}
	if _, err := m.Get(ctx, "web", "www.example.test"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Remove: %v; want not found", err)
	}
}

// TestIssueFailureIsReported: when the CA cannot reach an edge that
// answers, the record says failed and why; adding again retries.
func TestIssueFailureIsReported(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	edge := startEdge(t, st, "iad-1")
	pebble := startPebble(t, edge, 0)
	pebble.SetEdge(netip.MustParseAddr("127.0.0.2")) // nothing listens there
	m := runManager(t, st, Config{ACME: ACMEConfig{Directory: pebble.Directory, Roots: pebble.Roots, Challenges: []string{ChallengeHTTP01}}})
	createApp(t, st, "web")
	if _, err := m.Add(ctx, "web", "www.example.test"); err != nil {
		t.Fatal(err)
	}
	rec := waitStatus(t, m, "web", "www.example.test")
	if rec.Status != StatusFailed || !strings.Contains(rec.Error, "127.0.0.2") {
		t.Fatalf("record: %+v; want failed with the address the CA could not reach", rec)
	}

	pebble.SetEdge(netip.MustParseAddr("127.0.0.1"))
	rec, err := m.Add(ctx, "web", "www.example.test")
	if err != nil || rec.Status != StatusPending {
		t.Fatalf("adding a failed hostname again: %+v %v; want pending", rec, err)
	}
	if rec = waitStatus(t, m, "web", "www.example.test"); rec.Status != StatusIssued {
		t.Fatalf("retry: %+v; want issued", rec)
	}
}

// TestAddRefusals: bad names, names of another app, and no CA.
func TestAddRefusals(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	createApp(t, st, "web")
	createApp(t, st, "other")
	noCA := runManager(t, st, Config{})
	if _, err := noCA.Add(ctx, "web", "www.example.test"); !errors.Is(err, ErrNoCA) {
		t.Errorf("Add without a CA: %v; want ErrNoCA", err)
	}

	m := runManager(t, st, Config{ACME: ACMEConfig{Directory: "https://127.0.0.1:1/dir"}})
	for _, host := range []string{"", "localhost", "*.example.test", "10.0.0.1", "a..b", "-a.example.test", "web.perch.local", "x_y.example.test"} {
		if _, err := m.Add(ctx, "web", host); !errors.Is(err, ErrInvalid) {
			t.Errorf("Add(%q): %v; want ErrInvalid", host, err)
		}
	}
	if _, err := store.Create(ctx, st.Certs, "shop.example.test", api.Certificate{Hostname: "shop.example.test", App: "other", Source: SourceACME, Status: StatusIssued}); err != nil {
		t.Fatal(err)
	}
	_, err := m.Add(ctx, "web", "shop.example.test")
	if !errors.Is(err, ErrTaken) || !strings.Contains(err.Error(), "other") {
		t.Errorf("Add of another app's hostname: %v; want ErrTaken naming the app", err)
	}
}

// TestHTTPChallengePassesOtherRequests: the HTTP-01 handler answers only
// challenges it knows, for their own host; the rest reach the app.
func TestHTTPChallengePassesOtherRequests(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	edge := startEdge(t, st, "")
	ch := challenge{Type: ChallengeHTTP01, Domain: "www.example.test", Token: "tok-1", KeyAuth: "tok-1.thumb"}
	s := &kvSolver{st: st, wait: time.Second, log: testLog(t)}
	if err := s.Present(ctx, ch.acme()); err != nil {
		t.Fatal(err)
	}
	get := func(host, path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+edge.httpAddr+path, nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 5*time.Second, "challenge answered", func() (bool, string) {
		code, body := get("www.example.test:80", "/.well-known/acme-challenge/tok-1")
		return code == 200 && body == "tok-1.thumb", body
	})
	if _, body := get("other.example.test", "/.well-known/acme-challenge/tok-1"); body == "tok-1.thumb" {
		t.Errorf("challenge answered for another host")
	}
	if _, body := get("www.example.test", "/.well-known/acme-challenge/unknown"); !strings.HasPrefix(body, "app answers") {
		t.Errorf("unknown token did not reach the app: %q", body)
	}
	if err := s.CleanUp(ctx, ch.acme()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "challenge withdrawn", func() (bool, string) {
		_, body := get("www.example.test", "/.well-known/acme-challenge/tok-1")
		return strings.HasPrefix(body, "app answers"), body
	})
}
