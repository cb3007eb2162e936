package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/perchhq/perch/internal/store"
)

// acmeIssuer gets certificates from an ACME CA. It is Perch's own
// certmagic.Issuer rather than certmagic.ACMEIssuer because the latter
// answers challenges from listeners it opens in this process, and the CA
// connects to the app's hostname: the edges. This one is built on acmez
// (the ACME client under certmagic) with a solver that publishes the
// challenges to the edges.
type acmeIssuer struct {
	storage *Storage
	client  *acmez.Client
	email   string
	key     string
	log     *slog.Logger

	mu      sync.Mutex // guards account
	account *acme.Account
}

var _ certmagic.Issuer = (*acmeIssuer)(nil)

func newACMEIssuer(cfg ACMEConfig, storage *Storage, st *store.Store, log *slog.Logger) (*acmeIssuer, error) {
	u, err := url.Parse(cfg.Directory)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("ACME directory %q is not an http(s) URL; use e.g. https://acme-v02.api.letsencrypt.org/directory", cfg.Directory)
	}
	challenges := cfg.Challenges
	if len(challenges) == 0 {
		challenges = []string{ChallengeHTTP01, ChallengeTLSALPN01}
	}
	wait := cfg.EdgeWait
	if wait == 0 {
		wait = 15 * time.Second
	}
	solver := &kvSolver{st: st, wait: wait, log: log}
	solvers := map[string]acmez.Solver{}
	for _, c := range challenges {
		if c != ChallengeHTTP01 && c != ChallengeTLSALPN01 {
			return nil, fmt.Errorf("ACME challenge %q is not supported; use %s or %s", c, ChallengeHTTP01, ChallengeTLSALPN01)
		}
		solvers[c] = solver
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: cfg.Roots, MinVersion: tls.VersionTLS12}
	client := &acmez.Client{
		Client: &acme.Client{
			Directory:  cfg.Directory,
			HTTPClient: &http.Client{Transport: tr, Timeout: time.Minute},
			UserAgent:  "perch",
			Logger:     quiet(log),
		},
		ChallengeSolvers: solvers,
	}
	key := certmagic.StorageKeys.Safe(strings.ReplaceAll(u.Host+u.Path, "/", "-"))
	return &acmeIssuer{storage: storage, client: client, email: cfg.Email, key: key, log: log}, nil
}

// IssuerKey names the CA in storage paths.
func (i *acmeIssuer) IssuerKey() string { return i.key }

// Issue runs an ACME order for the names of csr.
func (i *acmeIssuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	acct, err := i.getAccount(ctx)
	if err != nil {
		return nil, err
	}
	params, err := acmez.OrderParametersFromCSR(acct, csr)
	if err != nil {
		return nil, fmt.Errorf("certs: ACME order: %w", err)
	}
	chains, err := i.client.ObtainCertificate(ctx, params)
	if err != nil {
		if accountGone(err) {
			i.mu.Lock()
			i.account = nil
			i.mu.Unlock()
		}
		return nil, fmt.Errorf("certs: ACME order for %s: %w", strings.Join(csr.DNSNames, ", "), err)
	}
	if len(chains) == 0 {
		return nil, errors.New("certs: the ACME CA issued no certificate chain")
	}
	return &certmagic.IssuedCertificate{Certificate: chains[0].ChainPEM, Metadata: chains[0]}, nil
}

func (i *acmeIssuer) accountKeys() (meta, key string) {
	dir := path.Join("acme", i.key, "perch-account")
	return dir + "/account.json", dir + "/account.key"
}

// getAccount returns the ACME account, registering it on first use. Every
// control plane shares the one account in storage; a lock keeps two from
// registering at once.
func (i *acmeIssuer) getAccount(ctx context.Context) (acme.Account, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.account != nil {
		return *i.account, nil
	}
	lock := "acme_account_" + i.key
	if err := i.storage.Lock(ctx, lock); err != nil {
		return acme.Account{}, err
	}
	defer func() {
		if err := i.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			i.log.Warn("cannot release lock", "lock", lock, "err", err)
		}
	}()
	acct, err := i.loadAccount(ctx)
	switch {
	case err == nil:
		acct, err = i.client.GetAccount(ctx, acct)
		if err == nil {
			i.account = &acct
			return acct, nil
		}
		if !accountGone(err) {
			return acme.Account{}, fmt.Errorf("certs: look up ACME account: %w", err)
		}
		i.log.Warn("the ACME CA no longer knows the stored account; registering a new one", "ca", i.key)
	case !errors.Is(err, fs.ErrNotExist):
		return acme.Account{}, err
	}
	acct, err = i.newAccount(ctx)
	if err != nil {
		return acme.Account{}, err
	}
	i.account = &acct
	return acct, nil
}

func (i *acmeIssuer) loadAccount(ctx context.Context) (acme.Account, error) {
	metaKey, keyKey := i.accountKeys()
	var acct acme.Account
	b, err := i.storage.Load(ctx, metaKey)
	if err != nil {
		return acct, err
	}
	if err := json.Unmarshal(b, &acct); err != nil {
		return acct, fmt.Errorf("certs: decode ACME account: %w", err)
	}
	kb, err := i.storage.Load(ctx, keyKey)
	if err != nil {
		return acct, err
	}
	k, err := certmagic.PEMDecodePrivateKey(kb)
	if err != nil {
		return acct, fmt.Errorf("certs: decode ACME account key: %w", err)
	}
	signer, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return acct, fmt.Errorf("certs: ACME account key is a %T, not ECDSA", k)
	}
	acct.PrivateKey = signer
	return acct, nil
}

func (i *acmeIssuer) newAccount(ctx context.Context) (acme.Account, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return acme.Account{}, fmt.Errorf("certs: ACME account key: %w", err)
	}
	acct := acme.Account{TermsOfServiceAgreed: true, PrivateKey: k}
	if i.email != "" {
		acct.Contact = []string{"mailto:" + i.email}
	}
	acct, err = i.client.NewAccount(ctx, acct)
	if err != nil {
		return acme.Account{}, fmt.Errorf("certs: register ACME account: %w", err)
	}
	kb, err := certmagic.PEMEncodePrivateKey(k)
	if err != nil {
		return acme.Account{}, fmt.Errorf("certs: encode ACME account key: %w", err)
	}
	b, err := json.Marshal(acct)
	if err != nil {
		return acme.Account{}, fmt.Errorf("certs: encode ACME account: %w", err)
	}
	metaKey, keyKey := i.accountKeys()
	if err := i.storage.Store(ctx, keyKey, kb); err != nil {
		return acme.Account{}, err
	}
	if err := i.storage.Store(ctx, metaKey, b); err != nil {
		return acme.Account{}, err
	}
	i.log.Info("registered ACME account", "ca", i.key, "account", acct.Location)
	return acct, nil
}

func accountGone(err error) bool {
	var p acme.Problem
	return errors.As(err, &p) && p.Type == acme.ProblemTypeAccountDoesNotExist
}
