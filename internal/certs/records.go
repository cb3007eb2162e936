package certs

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Add asks for a certificate for host in app and routes host to app. The
// record starts pending; a Manager's Run issues it. Adding a hostname the
// app already has returns its record (and retries a failed one).
func (m *Manager) Add(ctx context.Context, app, host string) (api.Certificate, error) {
	if m.acme == nil {
		return api.Certificate{}, &userError{ErrNoCA, "this control plane has no ACME CA to issue certificates for custom hostnames; start perch server with --acme-ca (e.g. https://acme-v02.api.letsencrypt.org/directory)"}
	}
	h, err := checkHostname(host, m.cfg.DevDomain)
	if err != nil {
		return api.Certificate{}, err
	}
	rec := api.Certificate{Hostname: h, App: app, Source: SourceACME, Status: StatusPending, CreatedAt: time.Now().UTC()}
	_, err = store.Create(ctx, m.st.Certs, h, rec)
	if errors.Is(err, store.ErrExists) {
		rec, err = store.Modify(ctx, m.st.Certs, h, func(c *api.Certificate) error {
			if c.App != app {
				return &userError{ErrTaken, fmt.Sprintf("hostname %s already has a certificate in app %s; remove it there first (perch certs remove %s -a %s)", h, c.App, h, c.App)}
			}
			if c.Status == StatusFailed {
				c.Status, c.Error = StatusPending, ""
			}
			return nil
		})
	}
	if err != nil {
		return api.Certificate{}, err
	}
	_, err = store.Modify(ctx, m.st.Apps, app, func(a *api.App) error {
		if !slices.Contains(a.Hostnames, h) {
			a.Hostnames = append(a.Hostnames, h)
		}
		return nil
	})
	if err != nil {
		return api.Certificate{}, fmt.Errorf("certs: route %s to %s: %w", h, app, err)
	}
	m.log.Info("certificate requested", "app", app, "hostname", h, "status", rec.Status)
	return rec, nil
}

// List returns app's certificates, sorted by hostname.
func (m *Manager) List(ctx context.Context, app string) ([]api.Certificate, error) {
	recs, err := store.List[api.Certificate](ctx, m.st.Certs, ">")
	if err != nil {
		return nil, err
	}
	out := []api.Certificate{}
	for _, r := range recs {
		if r.App == app {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, func(a, b api.Certificate) int { return strings.Compare(a.Hostname, b.Hostname) })
	return out, nil
}

// Get returns app's certificate for host; an error matching
// store.ErrNotFound if app has none.
func (m *Manager) Get(ctx context.Context, app, host string) (api.Certificate, error) {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	rec, _, err := store.Get[api.Certificate](ctx, m.st.Certs, h)
	if errors.Is(err, store.ErrNotFound) || (err == nil && rec.App != app) {
		return api.Certificate{}, &userError{store.ErrNotFound, fmt.Sprintf("app %s has no certificate for %s; perch certs list shows its certificates", app, host)}
	}
	return rec, err
}

// Remove deletes app's certificate for host and its key, and stops routing
// host to app. Edges stop serving it as their watches see the deletion.
func (m *Manager) Remove(ctx context.Context, app, host string) error {
	rec, err := m.Get(ctx, app, host)
	if err != nil {
		return err
	}
	if rec.Source == SourceDevCA {
		return &userError{ErrInvalid, fmt.Sprintf("the certificate for %s comes with the app; it goes when the app does", rec.Hostname)}
	}
	if err := m.removeRecord(ctx, rec); err != nil {
		return err
	}
	m.log.Info("certificate removed", "app", app, "hostname", rec.Hostname)
	return nil
}

// removeRecord removes a certificate: its record first (so that a renewal
// under way gives up), then its files in storage, then its route.
func (m *Manager) removeRecord(ctx context.Context, rec api.Certificate) error {
	if err := store.Delete(ctx, m.st.Certs, rec.Hostname); err != nil {
		return err
	}
	if err := m.deleteAssets(ctx, rec.Hostname); err != nil {
		return err
	}
	_, err := store.Modify(ctx, m.st.Apps, rec.App, func(a *api.App) error {
		a.Hostnames = slices.DeleteFunc(a.Hostnames, func(x string) bool { return x == rec.Hostname })
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("certs: stop routing %s: %w", rec.Hostname, err)
	}
	return nil
}

// deleteAssets deletes host's certificate, key and metadata from every
// issuer's storage.
func (m *Manager) deleteAssets(ctx context.Context, host string) error {
	issuers, err := m.storage.List(ctx, certmagic.StorageKeys.CertsPrefix(""), false)
	if err != nil {
		return nil // no certificates at all
	}
	site := certmagic.StorageKeys.Safe(host)
	for _, dir := range issuers {
		if err := m.storage.Delete(ctx, dir+"/"+site); err != nil {
			return err
		}
	}
	return nil
}

// leaf reads host's certificate from storage.
func (m *Manager) leaf(ctx context.Context, host string) (*x509.Certificate, error) {
	cfg := m.configFor(host)
	if cfg == nil {
		return nil, fmt.Errorf("certs: no issuer for %s", host)
	}
	b, err := m.storage.Load(ctx, certmagic.StorageKeys.SiteCert(cfg.Issuers[0].IssuerKey(), host))
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("certs: certificate of %s in storage is not PEM", host)
	}
	return x509.ParseCertificate(block.Bytes)
}

// markIssued copies the stored certificate's facts into host's record. A
// certificate whose record was removed while it was being issued is
// deleted again, so that no edge serves it.
func (m *Manager) markIssued(ctx context.Context, host string) {
	leaf, err := m.leaf(ctx, host)
	if err != nil {
		m.log.Warn("cannot read the certificate just issued", "hostname", host, "err", err)
		return
	}
	_, err = store.Modify(ctx, m.st.Certs, host, func(c *api.Certificate) error {
		c.Status, c.Error = StatusIssued, ""
		c.Issuer = leaf.Issuer.CommonName
		c.NotBefore, c.NotAfter = leaf.NotBefore.UTC(), leaf.NotAfter.UTC()
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		m.log.Info("certificate was removed while it was being issued; deleting it", "hostname", host)
		if err := m.deleteAssets(ctx, host); err != nil {
			m.log.Warn("cannot delete certificate", "hostname", host, "err", err)
		}
	case err != nil:
		m.log.Warn("cannot update certificate record", "hostname", host, "err", err)
	}
}

// modify changes host's record if it still exists.
func (m *Manager) modify(ctx context.Context, host string, fn func(*api.Certificate)) {
	_, err := store.Modify(ctx, m.st.Certs, host, func(c *api.Certificate) error { fn(c); return nil })
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("cannot update certificate record", "hostname", host, "err", err)
	}
}
