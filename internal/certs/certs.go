// Package certs gives apps TLS certificates: issued once, by the control
// plane, and served by every region's edge from memory.
//
// The control plane runs a Manager. It keeps the certificate records users
// see (bucket perch_certs), obtains and renews certificates through
// certmagic with a Storage on NATS JetStream (bucket perch_tls, locks in
// perch_locks), from an ACME CA (HTTP-01 and TLS-ALPN-01) or, in dev worlds,
// from a built-in CA that gives every app a certificate for
// <app>.<dev domain>. ACME challenges are published to the bucket
// perch_acme_challenges, because the CA connects to the app's hostname,
// which is the edges, not the control plane.
//
// Every edge runs a Source: KV watches keep the certificates, keys and
// challenges in memory, and its GetCertificate and HTTPChallenge answer
// from memory only (DESIGN.md invariant 1). The server, the agent and the
// tests import this package; the edge sees only its CertSource interface.
package certs

import (
	"crypto/x509"
	"errors"
	"time"
)

// Certificate sources and statuses, as api.Certificate shows them.
const (
	SourceACME  = "acme"
	SourceDevCA = "dev-ca"

	StatusPending = "pending"
	StatusIssued  = "issued"
	StatusFailed  = "failed"
)

// Challenge types the ACME issuer can answer.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// Config configures a Manager.
type Config struct {
	// ACME selects the CA for custom hostnames; without a Directory,
	// `perch certs add` is refused.
	ACME ACMEConfig
	// DevCA turns on the built-in CA, which gives every app a certificate
	// for <app>.<DevDomain>. For dev worlds: clients must trust its
	// certificate (Manager.DevCACert) by hand.
	DevCA bool
	// DevDomain is the domain apps answer under; "perch.local" if empty.
	DevDomain string
	// DevLifetime is how long dev certificates are valid; 30 days if 0.
	DevLifetime time.Duration
	// RenewCheck is how often certificates are checked for renewal;
	// 10 minutes if 0.
	RenewCheck time.Duration
	// RenewalWindow is the fraction of a certificate's lifetime left when
	// it is renewed; 1/3 if 0.
	RenewalWindow float64
}

// ACMEConfig selects and configures the ACME CA.
type ACMEConfig struct {
	// Directory is the CA's directory URL, e.g.
	// https://acme-v02.api.letsencrypt.org/directory.
	Directory string
	// Email is the account's contact address (optional).
	Email string
	// Roots are trusted for the CA's own HTTPS (a test CA's); the system
	// roots if nil.
	Roots *x509.CertPool
	// Challenges are the challenge types offered to the CA: ChallengeHTTP01
	// and ChallengeTLSALPN01 when empty.
	Challenges []string
	// EdgeWait bounds how long the issuer waits for every edge that is up
	// to confirm it can answer a challenge before telling the CA to check;
	// 15s if 0.
	EdgeWait time.Duration
}

// Errors the Manager's callers map to answers (the server: 400, 409, 422).
var (
	ErrInvalid = errors.New("invalid hostname")
	ErrTaken   = errors.New("hostname taken")
	ErrNoCA    = errors.New("no certificate authority")
)

// userError is an error whose message is for the user, of a kind that
// errors.Is matches against the sentinels above.
type userError struct {
	kind error
	msg  string
}

func (e *userError) Error() string        { return e.msg }
func (e *userError) Is(target error) bool { return target == e.kind }
