package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Manager obtains and renews certificates for the control plane. Several
// control planes sharing one NATS may each run one: the records bucket
// tells them what to do and certmagic's storage locks make sure each
// issuance and renewal happens once.
type Manager struct {
	cfg     Config
	st      *store.Store
	storage *Storage
	log     *slog.Logger
	cache   *certmagic.Cache
	stop    sync.Once         // stops cache
	acme    *certmagic.Config // nil without an ACME CA
	dev     *certmagic.Config // nil without the dev CA
	ca      *devCA
	wg      sync.WaitGroup // issuance and renewal goroutines

	mu      sync.Mutex                 // guards the fields below
	ctx     context.Context            // Run's, for issuance goroutines
	records map[string]api.Certificate // by hostname, fed by the watch
	busy    map[string]bool            // hostnames this process is issuing or renewing
	retryAt map[string]time.Time       // no renewal attempt before, after a failure
	fails   map[string]int             // failed renewal attempts in a row
}

// NewManager prepares certificate management on st: the ACME issuer when
// cfg.ACME has a directory, and the dev CA (made on first use and kept in
// the store) when cfg.DevCA is set. Run starts it.
func NewManager(ctx context.Context, st *store.Store, cfg Config, log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	zl := zapToSlog(log.With("component", "certmagic"))
	log = log.With("component", "certs")
	if cfg.DevDomain == "" {
		cfg.DevDomain = "perch.local"
	}
	if cfg.DevLifetime == 0 {
		cfg.DevLifetime = 30 * 24 * time.Hour
	}
	if cfg.RenewCheck == 0 {
		cfg.RenewCheck = 10 * time.Minute
	}
	if cfg.RenewalWindow == 0 {
		cfg.RenewalWindow = 1.0 / 3
	}
	if cfg.RenewalWindow <= 0 || cfg.RenewalWindow >= 1 {
		return nil, fmt.Errorf("certs: renewal window %v must be between 0 and 1 (the fraction of a certificate's lifetime left when it is renewed)", cfg.RenewalWindow)
	}
	m := &Manager{
		cfg: cfg, st: st, log: log, storage: NewStorage(st, log),
		records: map[string]api.Certificate{}, busy: map[string]bool{},
		retryAt: map[string]time.Time{}, fails: map[string]int{},
	}
	if err := m.storage.SyncEdge(ctx); err != nil { // edgetls.go
		return nil, err
	}
	// Manager renews by itself (renew.go) and never puts certificates in
	// this cache, so its maintenance loop stays idle; certmagic reads the
	// check interval from it when deciding whether a renewal is due.
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(c certmagic.Certificate) (*certmagic.Config, error) { return m.configFor(firstName(c.Names)), nil },
		RenewCheckInterval: cfg.RenewCheck,
		Logger:             zl,
	})
	newConfig := func(iss certmagic.Issuer) *certmagic.Config {
		return certmagic.New(m.cache, certmagic.Config{
			RenewalWindowRatio: cfg.RenewalWindow,
			OnEvent:            m.onEvent,
			Issuers:            []certmagic.Issuer{iss},
			// ECDSA P-256 keys for new certificates and renewals (a smaller,
			// faster handshake than RSA); certificates stored with RSA keys
			// are served as they are until renewed.
			KeySource:           certmagic.StandardKeyGenerator{KeyType: certmagic.P256},
			Storage:             m.storage,
			DisableStorageCheck: true, // it would leave a delete marker per issuance
			DisableARI:          true,
			OCSP:                certmagic.OCSPConfig{DisableStapling: true},
			Logger:              zl,
		})
	}
	if cfg.ACME.Directory != "" {
		iss, err := newACMEIssuer(cfg.ACME, m.storage, st, log.With("ca", cfg.ACME.Directory))
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("certs: %w", err)
		}
		m.acme = newConfig(iss)
	}
	if cfg.DevCA {
		ca, err := loadOrCreateDevCA(ctx, m.storage, cfg.DevDomain, cfg.DevLifetime)
		if err != nil {
			m.Close()
			return nil, err
		}
		m.ca = ca
		m.dev = newConfig(ca)
	}
	return m, nil
}

func firstName(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// DevCACert is the dev CA's certificate in PEM, for clients to trust; nil
// without the dev CA.
func (m *Manager) DevCACert() []byte {
	if m.ca == nil {
		return nil
	}
	return m.ca.certPEM
}

// configFor is the certmagic config that issues host's certificate: the
// dev CA's for names under the dev domain, else the ACME CA's (nil if
// there is none).
func (m *Manager) configFor(host string) *certmagic.Config {
	if m.dev != nil && underDomain(host, m.cfg.DevDomain) {
		return m.dev
	}
	return m.acme
}

// Run issues what the records ask for, gives every app its dev
// certificate, removes the certificates of deleted apps and renews
// certificates in their renewal window, until ctx is done.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	var wg sync.WaitGroup
	wg.Go(func() { m.st.Watch(ctx, m.st.Certs, m.log, m.onRecords) })
	wg.Go(func() { m.st.Watch(ctx, m.st.Apps, m.log, m.onApps) })
	// Renewal runs on one control plane of a cluster at a time (the
	// "cert-renewal" lease); certmagic's storage locks still keep two
	// from renewing one certificate during a takeover.
	wg.Go(func() { _ = m.st.RunHeld(ctx, "cert-renewal", 15*time.Second, m.log, m.renewLoop) })
	wg.Wait()
	m.wg.Wait()
	m.Close()
	return nil
}

// Close releases what NewManager started, for a Manager that Run never
// ran (Run releases it when it returns).
func (m *Manager) Close() { m.stop.Do(m.cache.Stop) }

// onRecords keeps m.records and starts the issuance of pending records.
func (m *Manager) onRecords(c store.Change) {
	var pending []string
	m.mu.Lock()
	if c.All != nil {
		clear(m.records)
		for k, v := range c.All {
			var rec api.Certificate
			if json.Unmarshal(v, &rec) == nil {
				m.records[k] = rec
				if rec.Status == StatusPending {
					pending = append(pending, k)
				}
			}
		}
	} else if c.Deleted {
		delete(m.records, c.Key)
	} else {
		var rec api.Certificate
		if err := json.Unmarshal(c.Value, &rec); err != nil {
			m.log.Warn("ignoring certificate record that does not decode", "hostname", c.Key, "err", err)
		} else {
			m.records[c.Key] = rec
			if rec.Status == StatusPending {
				pending = append(pending, c.Key)
			}
		}
	}
	m.mu.Unlock()
	for _, h := range pending {
		m.start(h, m.issue)
	}
}

// onApps gives new apps their dev certificate and removes the certificates
// of apps that are gone.
func (m *Manager) onApps(c store.Change) {
	ctx := m.runCtx()
	switch {
	case c.All != nil:
		for name := range c.All {
			m.ensureDevRecord(ctx, name)
		}
		m.removeOrphans(ctx, func(app string) bool { _, ok := c.All[app]; return !ok })
	case c.Deleted:
		m.removeOrphans(ctx, func(app string) bool { return app == c.Key })
	default:
		m.ensureDevRecord(ctx, c.Key)
	}
}

// removeOrphans removes the certificates of the apps suspect says may be
// gone, once the store confirms they are: the app watch may be older than
// the certificate list (an app created and given a certificate meanwhile).
func (m *Manager) removeOrphans(ctx context.Context, suspect func(app string) bool) {
	recs, err := store.List[api.Certificate](ctx, m.st.Certs, ">")
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("cannot list certificates", "err", err)
		}
		return
	}
	for _, rec := range recs {
		if !suspect(rec.App) {
			continue
		}
		if _, _, err := store.Get[api.App](ctx, m.st.Apps, rec.App); !errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err := m.removeRecord(ctx, rec); err != nil && ctx.Err() == nil {
			m.log.Warn("cannot remove the certificate of a deleted app", "app", rec.App, "hostname", rec.Hostname, "err", err)
		}
	}
}

// ensureDevRecord asks for app's dev certificate if it has none.
func (m *Manager) ensureDevRecord(ctx context.Context, app string) {
	if m.dev == nil {
		return
	}
	host := app + "." + m.cfg.DevDomain
	m.mu.Lock()
	_, ok := m.records[host]
	m.mu.Unlock()
	if ok {
		return
	}
	rec := api.Certificate{Hostname: host, App: app, Source: SourceDevCA, Status: StatusPending, CreatedAt: time.Now().UTC()}
	if _, err := store.Create(ctx, m.st.Certs, host, rec); err != nil && !errors.Is(err, store.ErrExists) {
		m.log.Warn("cannot ask for the dev certificate of an app", "app", app, "err", err)
	}
}

func (m *Manager) runCtx() context.Context {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctx
}

// start runs fn for host in the background unless this process is already
// working on host.
func (m *Manager) start(host string, fn func(context.Context, string)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy[host] || m.ctx == nil || m.ctx.Err() != nil {
		return
	}
	m.busy[host] = true
	ctx := m.ctx
	m.wg.Go(func() {
		defer func() {
			m.mu.Lock()
			delete(m.busy, host)
			m.mu.Unlock()
		}()
		fn(ctx, host)
	})
}

// onEvent follows certmagic's issuance events.
func (m *Manager) onEvent(ctx context.Context, event string, data map[string]any) error {
	host, _ := data["identifier"].(string)
	renewal, _ := data["renewal"].(bool)
	switch event {
	case "cert_obtaining":
		// A renewal that started before the certificate was removed
		// must not bring it back.
		if _, _, err := store.Get[api.Certificate](ctx, m.st.Certs, host); errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("certificate for %s was removed", host)
		}
	case "cert_obtained":
		if renewal {
			m.log.Info("certificate renewed", "hostname", host, "issuer", data["issuer"])
			m.markIssued(ctx, host)
		}
	case "cert_failed":
		if renewal {
			m.log.Warn("certificate renewal failed; will retry", "hostname", host, "err", data["error"])
			m.modify(ctx, host, func(c *api.Certificate) { c.Error = fmt.Sprint(data["error"]) })
		}
	}
	return nil
}
