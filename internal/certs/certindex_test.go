package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"

	"github.com/perchhq/perch/internal/store"
)

// TestCertIndexKeepsLastGoodPair: during a renewal certmagic writes the
// new key before the new certificate; the edge keeps serving the old pair
// until both match, and drops the certificate when it is deleted.
func TestCertIndexKeepsLastGoodPair(t *testing.T) {
	certPEM, keyPEM, err := newDevCA("perch.local")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := parseDevCA(certPEM, keyPEM, "perch.local", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func() (crt, key []byte) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := acmez.NewCSR(k, []string{"hello.perch.local"})
		ic, err := ca.Issue(context.Background(), csr)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := certmagic.PEMEncodePrivateKey(k)
		return ic.Certificate, kb
	}
	crtKey := kvKey(certmagic.StorageKeys.SiteCert(devCAIssuerKey, "hello.perch.local"))
	keyKey := kvKey(certmagic.StorageKeys.SitePrivateKey(devCAIssuerKey, "hello.perch.local"))
	x := newCertIndex(slog.New(slog.DiscardHandler))
	serving := func() string {
		c := (*x.serve())["hello.perch.local"]
		if c == nil {
			return ""
		}
		return c.Leaf.SerialNumber.String()
	}

	crt1, key1 := leaf()
	x.apply(store.Change{All: map[string][]byte{crtKey: crt1, keyKey: key1, "unrelated": []byte("x")}})
	first := serving()
	if first == "" {
		t.Fatal("certificate not served after the initial load")
	}
	crt2, key2 := leaf()
	x.apply(store.Change{Key: keyKey, Value: key2})
	if got := serving(); got != first {
		t.Errorf("with a new key and the old certificate the index serves %q; want the old pair %q", got, first)
	}
	x.apply(store.Change{Key: crtKey, Value: crt2})
	if got := serving(); got == first || got == "" {
		t.Errorf("renewed certificate not served: %q", got)
	}
	x.apply(store.Change{Key: keyKey, Deleted: true})
	x.apply(store.Change{Key: crtKey, Deleted: true})
	if got := serving(); got != "" {
		t.Errorf("deleted certificate still served: %q", got)
	}
}
