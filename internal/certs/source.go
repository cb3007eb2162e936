package certs

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mholt/acmez/v3"
	"github.com/perchhq/perch/internal/store"
)

// SourceConfig configures a Source.
type SourceConfig struct {
	// Store feeds the Source through watches. Required.
	Store *store.Store
	// HostID is this edge's host. The Source confirms each ACME challenge
	// it has loaded under it, so the issuer tells the CA to check only
	// once every edge can answer. Empty: no confirmations.
	HostID string
	Log    *slog.Logger
}

// Source is an edge's view of the certificates: it implements the edge's
// CertSource. Watches keep certificates and ACME challenges in memory; the
// handshake and request paths read only that memory.
type Source struct {
	cfg SourceConfig
	log *slog.Logger

	certs atomic.Pointer[map[string]*tls.Certificate] // by lower-case name
	chals atomic.Pointer[challenges]

	readyOnce sync.Once
	ready     chan struct{}
	loaded    atomic.Int32 // bits of the buckets read in full at least once
}

// challenges is an immutable set of the ACME challenges being validated.
type challenges struct {
	http map[string]challenge        // http-01, by token
	alpn map[string]*tls.Certificate // tls-alpn-01 answer, by domain
}

// NewSource returns a Source; Run feeds it.
func NewSource(cfg SourceConfig) *Source {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: cfg.Log.With("component", "certs"), ready: make(chan struct{})}
	s.certs.Store(&map[string]*tls.Certificate{})
	s.chals.Store(&challenges{http: map[string]challenge{}, alpn: map[string]*tls.Certificate{}})
	return s
}

// Run watches the certificate storage and the challenges until ctx is done.
func (s *Source) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	certs := newCertIndex(s.log)
	wg.Go(func() {
		s.cfg.Store.Watch(ctx, s.cfg.Store.EdgeTLS, s.log, func(c store.Change) { // edgetls.go
			if certs.apply(c) {
				s.certs.Store(certs.serve())
			}
			if c.All != nil {
				s.markLoaded(1)
			}
		})
	})
	chals := map[string]challenge{}
	wg.Go(func() {
		s.cfg.Store.Watch(ctx, s.cfg.Store.Challenges, s.log, func(c store.Change) {
			s.applyChallenges(ctx, chals, c)
			if c.All != nil {
				s.markLoaded(2)
			}
		})
	})
	wg.Wait()
	return nil
}

// markLoaded records that a bucket (bit 1: certificates, 2: challenges)
// was read in full.
func (s *Source) markLoaded(bit int32) {
	if s.loaded.Or(bit)|bit == 3 {
		s.readyOnce.Do(func() { close(s.ready) })
	}
}

// Ready is closed once certificates and challenges were read in full.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// GetCertificate picks the certificate for a TLS handshake by SNI: an
// exact name, else a wildcard one level up. A client offering acme-tls/1
// is a CA checking a TLS-ALPN-01 challenge (RFC 8737: nobody else offers
// it) and gets the challenge certificate.
func (s *Source) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name == "" {
		return nil, errors.New("certs: the client sent no server name (SNI); connect by hostname")
	}
	if slices.Contains(hello.SupportedProtos, acmez.ACMETLS1Protocol) {
		if c := s.chals.Load().alpn[name]; c != nil {
			return c, nil
		}
		return nil, fmt.Errorf("certs: no ACME challenge under way for %s", name)
	}
	m := *s.certs.Load()
	if c := m[name]; c != nil {
		return c, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := m["*"+name[i:]]; c != nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("certs: no certificate for %s", name)
}

// HTTPChallenge answers ACME HTTP-01 challenges in front of next; other
// requests, including challenges this edge does not know (an app may run
// its own ACME client), go to next.
func (s *Source) HTTPChallenge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.URL.Path, "/.well-known/acme-challenge/")
		if ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			if c, found := s.chals.Load().http[token]; found && hostIs(r.Host, c.Domain) {
				w.Header().Set("Content-Type", "text/plain")
				_, _ = w.Write([]byte(c.KeyAuth))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func hostIs(hostport, domain string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	return strings.EqualFold(strings.TrimSuffix(h, "."), domain)
}

// applyChallenges updates chals (owned by the watch goroutine), publishes
// the new set and confirms the challenges that arrived.
func (s *Source) applyChallenges(ctx context.Context, chals map[string]challenge, c store.Change) {
	var arrived []string
	decode := func(key string, value []byte) {
		id, ok := challengeIDFromKey(key)
		if !ok {
			return // a confirmation
		}
		var ch challenge
		if err := json.Unmarshal(value, &ch); err != nil {
			s.log.Warn("ignoring ACME challenge that does not decode", "key", key, "err", err)
			return
		}
		chals[id] = ch
		arrived = append(arrived, id)
	}
	switch {
	case c.All != nil:
		clear(chals)
		for k, v := range c.All {
			decode(k, v)
		}
	case c.Deleted:
		id, ok := challengeIDFromKey(c.Key)
		if !ok {
			return
		}
		delete(chals, id)
	default:
		if _, ok := challengeIDFromKey(c.Key); !ok {
			return
		}
		decode(c.Key, c.Value)
	}
	next := &challenges{http: map[string]challenge{}, alpn: map[string]*tls.Certificate{}}
	old := s.chals.Load()
	for _, ch := range chals {
		switch ch.Type {
		case ChallengeHTTP01:
			next.http[ch.Token] = ch
		case ChallengeTLSALPN01:
			// Building the answer costs a key generation: once per
			// challenge, not per handshake.
			if cert := old.alpn[ch.Domain]; cert != nil && !slices.Contains(arrived, ch.id()) {
				next.alpn[ch.Domain] = cert
				continue
			}
			cert, err := acmez.TLSALPN01ChallengeCert(ch.acme())
			if err != nil {
				s.log.Warn("cannot make TLS-ALPN-01 answer", "domain", ch.Domain, "err", err)
				continue
			}
			next.alpn[ch.Domain] = cert
		}
	}
	s.chals.Store(next)
	if s.cfg.HostID == "" {
		return
	}
	for _, id := range arrived {
		if _, err := s.cfg.Store.Challenges.Put(ctx, ackKey(id, s.cfg.HostID), []byte("1")); err != nil && ctx.Err() == nil {
			s.log.Warn("cannot confirm ACME challenge", "err", err)
		}
	}
}
