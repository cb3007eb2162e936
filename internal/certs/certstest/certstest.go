// Package certstest runs Pebble, Let's Encrypt's test ACME server, inside a
// test, with a DNS server that resolves every name to the edge under test,
// so that Pebble's HTTP-01 and TLS-ALPN-01 validations reach it on
// loopback. Only tests import it.
package certstest

import (
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Options configures Pebble.
type Options struct {
	// EdgeAddr is the address every name resolves to. Required.
	EdgeAddr netip.Addr
	// HTTPPort and TLSPort are where Pebble validates HTTP-01 and
	// TLS-ALPN-01 challenges (80 and 443 if 0).
	HTTPPort, TLSPort int
	// Validity is how long issued certificates are valid (Pebble's
	// default, five years, if 0).
	Validity time.Duration
	// Log receives Pebble's log; discarded if nil.
	Log io.Writer
}

// Pebble is a running Pebble.
type Pebble struct {
	// Directory is the ACME directory URL.
	Directory string
	// Roots trusts Pebble's own HTTPS (for the ACME client).
	Roots *x509.CertPool

	ca        *ca.CAImpl
	finalized atomic.Int64

	mu   sync.Mutex // guards edge
	edge netip.Addr
}

// Start runs Pebble and its DNS server until the test ends. It sets
// Pebble's environment (no random validation delay, no rejected nonces),
// so tests using it cannot run in parallel.
func Start(t testing.TB, opts Options) *Pebble {
	t.Helper()
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 80
	}
	if opts.TLSPort == 0 {
		opts.TLSPort = 443
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	p := &Pebble{edge: opts.EdgeAddr}
	dnsAddr := p.serveDNS(t)

	logger := log.New(opts.Log, "pebble ", log.LstdFlags)
	store := db.NewMemoryStore()
	p.ca = ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "test", ValidityPeriod: uint64(opts.Validity / time.Second)},
	})
	v := va.New(logger, opts.HTTPPort, opts.TLSPort, false, dnsAddr, store)
	w := wfe.New(logger, store, v, p.ca, nil, false, false, 0, 0)
	srv := httptest.NewUnstartedServer(p.count(w.Handler()))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.Directory = srv.URL + wfe.DirectoryPath
	p.Roots = x509.NewCertPool()
	p.Roots.AddCert(srv.Certificate())
	return p
}

// SetEdge makes every name resolve to addr from now on.
func (p *Pebble) SetEdge(addr netip.Addr) {
	p.mu.Lock()
	p.edge = addr
	p.mu.Unlock()
}

// IssuerRoots trusts the certificates Pebble issues.
func (p *Pebble) IssuerRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.GetRootCert(0).Cert)
	return pool
}

// Issued counts the certificates Pebble has issued (orders finalized).
func (p *Pebble) Issued() int { return int(p.finalized.Load()) }

// count counts successful order finalizations.
func (p *Pebble) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/finalize-order/") {
			h.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		if sw.code == http.StatusOK {
			p.finalized.Add(1)
		}
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// serveDNS answers A queries for any name with the edge address, over TCP
// (how Pebble asks), and returns its address.
func (p *Pebble) serveDNS(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("certstest: DNS listener: %v", err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		p.mu.Lock()
		edge := p.edge
		p.mu.Unlock()
		for _, question := range q.Question {
			if question.Qtype == dns.TypeA && edge.Is4() {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 0},
					A:   edge.AsSlice(),
				})
			}
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}
