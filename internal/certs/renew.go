package certs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"github.com/perchhq/perch/internal/api"
)

// issue obtains host's first certificate. certmagic takes the storage lock
// and does nothing if storage has the certificate already, so control
// planes racing on one pending record issue it once.
func (m *Manager) issue(ctx context.Context, host string) {
	cfg := m.configFor(host)
	if cfg == nil {
		m.modify(ctx, host, func(c *api.Certificate) {
			c.Status, c.Error = StatusFailed, "this control plane has no ACME CA configured (perch server --acme-ca)"
		})
		return
	}
	if err := cfg.ObtainCertSync(ctx, host); err != nil {
		if ctx.Err() != nil {
			return // shutting down: the record stays pending for the next run
		}
		m.log.Warn("certificate not issued", "hostname", host, "err", err)
		m.modify(ctx, host, func(c *api.Certificate) { c.Status, c.Error = StatusFailed, describeFailure(host, err) })
		return
	}
	m.log.Info("certificate issued", "hostname", host, "issuer", cfg.Issuers[0].IssuerKey())
	m.markIssued(ctx, host)
}

// renewLoop checks every RenewCheck which issued certificates are in their
// renewal window and renews them.
func (m *Manager) renewLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.RenewCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		var hosts []string
		for h, rec := range m.records {
			if rec.Status == StatusIssued && !m.busy[h] && time.Now().After(m.retryAt[h]) {
				hosts = append(hosts, h)
			}
		}
		m.mu.Unlock()
		for _, h := range hosts {
			if m.due(ctx, h) {
				m.start(h, m.renew)
			}
		}
	}
}

// due says whether host's stored certificate is in its renewal window, by
// certmagic's rule without ARI: a RenewalWindow fraction of its lifetime
// left, or less than five checks' worth.
func (m *Manager) due(ctx context.Context, host string) bool {
	leaf, err := m.leaf(ctx, host)
	if err != nil {
		m.log.Warn("cannot read certificate to check its expiry", "hostname", host, "err", err)
		return false
	}
	// NotAfter is inclusive at one-second resolution, as certmagic counts.
	expires := leaf.NotAfter.Truncate(time.Second).Add(time.Second)
	left := time.Until(expires)
	window := time.Duration(float64(expires.Sub(leaf.NotBefore)) * m.cfg.RenewalWindow)
	return left < window || left < 5*m.cfg.RenewCheck
}

// renew renews host's certificate. Under the storage lock certmagic looks
// at the stored certificate again: if another control plane renewed it
// meanwhile, there is nothing to do. A failure is retried with backoff
// (one minute, doubling up to six hours) so a broken CA is not hammered.
func (m *Manager) renew(ctx context.Context, host string) {
	cfg := m.configFor(host)
	if cfg == nil {
		return
	}
	err := cfg.RenewCertSync(ctx, host, false)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		delete(m.fails, host)
		delete(m.retryAt, host)
		return
	}
	if ctx.Err() != nil {
		return
	}
	m.fails[host]++
	wait := min(time.Minute<<min(m.fails[host]-1, 9), 6*time.Hour)
	m.retryAt[host] = time.Now().Add(wait)
	m.log.Warn("certificate renewal failed", "hostname", host, "err", err, "retry_in", wait)
}

// describeFailure says in a line why host got no certificate and what to
// check: the CA's problem report when there is one.
func describeFailure(host string, err error) string {
	var p acme.Problem
	if !errors.As(err, &p) {
		return err.Error()
	}
	kind := strings.TrimPrefix(p.Type, "urn:ietf:params:acme:error:")
	msg := fmt.Sprintf("the CA refused (%s): %s", kind, p.Detail)
	switch kind {
	case "connection", "unauthorized", "dns", "incorrectResponse", "tls":
		msg += fmt.Sprintf("; check that %s resolves to your edges and that the app serves port 80 (http) or 443 (tls), then run perch certs add %s again", host, host)
	}
	return msg
}
