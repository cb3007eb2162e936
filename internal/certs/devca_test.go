package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3"
	"github.com/perchhq/perch/internal/store"
)

// TestDevCAGivesEveryAppACertificate: with the dev CA on, an app gets a
// certificate for <app>.perch.local that chains to the CA clients are told
// to trust, and loses it when the app is deleted.
func TestDevCAGivesEveryAppACertificate(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	edge := startEdge(t, st, "")
	m := runManager(t, st, Config{DevCA: true})
	createApp(t, st, "hello")

	rec := waitStatus(t, m, "hello", "hello.perch.local")
	if rec.Status != StatusIssued || rec.Source != SourceDevCA {
		t.Fatalf("dev certificate: %+v; want issued by the dev CA", rec)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(m.DevCACert()) {
		t.Fatalf("DevCACert is not PEM: %q", m.DevCACert())
	}
	var leaf *x509.Certificate
	eventually(t, 5*time.Second, "edge serves the dev certificate", func() (bool, string) {
		var err error
		leaf, err = handshake(edge.tlsAddr, "hello.perch.local", roots)
		return err == nil, errString(err)
	})
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("dev certificate key is %T; want ECDSA P-256", leaf.PublicKey)
	}

	// The CA is kept in the store: a second control plane (or a restart)
	// uses the same one.
	m2, err := NewManager(ctx, st, Config{DevCA: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if string(m2.DevCACert()) != string(m.DevCACert()) {
		t.Errorf("a second manager made another dev CA")
	}

	// The CA signs nothing outside perch.local, and clients would not
	// believe it if it did: its certificate is name constrained.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := acmez.NewCSR(key, []string{"www.example.com"})
	if _, err := m.ca.Issue(ctx, csr); err == nil || !strings.Contains(err.Error(), "perch.local") {
		t.Errorf("dev CA signed www.example.com: %v", err)
	}
	if c := m.ca.cert; !c.PermittedDNSDomainsCritical || len(c.PermittedDNSDomains) != 1 || c.PermittedDNSDomains[0] != "perch.local" {
		t.Errorf("dev CA is not constrained to perch.local: %v", c.PermittedDNSDomains)
	}

	if err := m.Remove(ctx, "hello", "hello.perch.local"); err == nil {
		t.Errorf("removing the dev certificate by hand was allowed")
	}
	if err := store.Delete(ctx, st.Apps, "hello"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "deleted app's certificate is gone from the edge", func() (bool, string) {
		_, err := edge.src.GetCertificate(&tls.ClientHelloInfo{ServerName: "hello.perch.local"})
		return err != nil, "still served"
	})
	if recs, _ := m.List(ctx, "hello"); len(recs) != 0 {
		t.Errorf("deleted app still has certificates: %+v", recs)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
