package certs

import (
	"context"
	"crypto/x509"
	"testing"
	"time"
)

// TestRenewOnceAcrossControlPlanes: two control planes share one store;
// when the certificate enters its renewal window both notice, and the
// storage lock makes exactly one of them renew it. The edge then serves
// the new certificate.
func TestRenewOnceAcrossControlPlanes(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	edge := startEdge(t, st, "iad-1")
	// Ten-second certificates renewed with 40% of their life left: the
	// first renewal comes about 6s after issuance, the next 6s after that.
	pebble := startPebble(t, edge, 10*time.Second)
	cfg := Config{
		ACME:          ACMEConfig{Directory: pebble.Directory, Roots: pebble.Roots},
		RenewCheck:    200 * time.Millisecond,
		RenewalWindow: 0.4,
	}
	m1 := runManager(t, st, cfg)
	m2 := runManager(t, st, cfg)
	createApp(t, st, "web")
	if _, err := m1.Add(ctx, "web", "www.example.test"); err != nil {
		t.Fatal(err)
	}
	first := waitStatus(t, m2, "web", "www.example.test")
	if first.Status != StatusIssued {
		t.Fatalf("not issued: %+v", first)
	}
	var before *x509.Certificate
	eventually(t, 5*time.Second, "edge serves the certificate", func() (bool, string) {
		c, err := handshake(edge.tlsAddr, "www.example.test", pebble.IssuerRoots())
		if err != nil {
			return false, err.Error()
		}
		before = c
		return true, ""
	})
	if n := pebble.Issued(); n != 1 {
		t.Fatalf("two control planes issued %d certificates for one request; want 1", n)
	}

	var after *x509.Certificate
	eventually(t, 15*time.Second, "edge serves a renewed certificate", func() (bool, string) {
		c, err := handshake(edge.tlsAddr, "www.example.test", pebble.IssuerRoots())
		if err != nil {
			return false, err.Error()
		}
		after = c
		return c.SerialNumber.Cmp(before.SerialNumber) != 0, "serial " + c.SerialNumber.String()
	})
	// Both control planes saw the renewal due; let the one that lost the
	// race for the lock finish before counting.
	eventually(t, 5*time.Second, "both control planes idle", func() (bool, string) {
		return m1.idle() && m2.idle(), "busy"
	})
	if n := pebble.Issued(); n != 2 {
		t.Errorf("Pebble issued %d certificates by the first renewal; want 2 (one issuance, one renewal)", n)
	}
	if !after.NotAfter.After(before.NotAfter) {
		t.Errorf("renewed certificate expires %s, not after the old one's %s", after.NotAfter, before.NotAfter)
	}
	eventually(t, 5*time.Second, "record shows the renewed certificate", func() (bool, string) {
		rec, err := m1.Get(ctx, "web", "www.example.test")
		if err != nil {
			return false, err.Error()
		}
		return rec.NotAfter.Equal(after.NotAfter.UTC()), rec.NotAfter.String()
	})
}

// idle says whether m is issuing or renewing nothing.
func (m *Manager) idle() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.busy) == 0
}
