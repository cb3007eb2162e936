package edge

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// CertSource gives the edge the certificates of the names it terminates
// TLS for (internal/certs implements it with ACME and a dev CA).
type CertSource interface {
	// GetCertificate is tls.Config.GetCertificate. It also answers
	// TLS-ALPN-01 challenges, which arrive with ALPN "acme-tls/1".
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// HTTPChallenge wraps the port-80 HTTP handler to answer ACME HTTP-01
	// challenges.
	HTTPChallenge(next http.Handler) http.Handler
}

// alpnACME is the ALPN protocol of ACME TLS-ALPN-01 challenges (RFC 8737).
const alpnACME = "acme-tls/1"

// handshakeTimeout bounds how long a client may take to send its first
// bytes on a shared port and to finish a TLS handshake: the header read
// timeout (Limits.ReadHeaderTimeout), or 10 s when that is off.
func (e *Edge) handshakeTimeout() time.Duration {
	if e.limits.ReadHeaderTimeout > 0 {
		return e.limits.ReadHeaderTimeout
	}
	return 10 * time.Second
}

// defaultHTTPALPN is what a "tls" + "http" port offers unless its
// tls_options.alpn says otherwise.
var defaultHTTPALPN = []string{"h2", "http/1.1"}

// tlsVersions maps tls_options.versions to crypto/tls.
var tlsVersions = map[string]uint16{"TLSv1.2": tls.VersionTLS12, "TLSv1.3": tls.VersionTLS13}

// tlsConfigs holds one tls.Config per distinct set of TLS options, all
// sharing the session ticket keys so that clients resume sessions across
// apps, rebuilds of the route table and (keys shared by the region,
// tickets.go) the other edges of the region.
type tlsConfigs struct {
	certs CertSource

	mu   sync.Mutex
	keys [][32]byte // the encrypting key first
	cfg  map[string]*tls.Config
	acme []*tls.Config // the ACME clones of cfg's configs
}

func newTLSConfigs(certs CertSource) *tlsConfigs {
	t := &tlsConfigs{certs: certs, cfg: map[string]*tls.Config{}}
	var k [32]byte
	_, _ = rand.Read(k[:])
	t.keys = [][32]byte{k} // until the region's keys are read
	return t
}

var errNoCertSource = errors.New("edge: no certificate source configured; TLS cannot be terminated")

// get is the config of a chain; ch may be nil for a connection that named
// no app of the port (the certificate source still decides).
func (t *tlsConfigs) get(ch *chain) *tls.Config {
	alpn, lo, hi := defaultHTTPALPN, uint16(tls.VersionTLS12), uint16(tls.VersionTLS13)
	if ch != nil {
		alpn, lo, hi = ch.alpn, ch.minTLS, ch.maxTLS
	}
	key := fmt.Sprintf("%s|%x|%x", strings.Join(alpn, ","), lo, hi)
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.cfg[key]; c != nil {
		return c
	}
	c := &tls.Config{
		MinVersion: lo,
		MaxVersion: hi,
		NextProtos: slices.Clone(alpn),
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if t.certs == nil {
				return nil, errNoCertSource
			}
			return t.certs.GetCertificate(hello)
		},
	}
	c.SetSessionTicketKeys(t.keys)
	acme := c.Clone()
	acme.SetSessionTicketKeys(t.keys)
	t.acme = append(t.acme, acme)
	acme.NextProtos = []string{alpnACME}
	// Offer acme-tls/1 only to the ACME server, which offers nothing else:
	// in the list of every connection it would fail clients whose
	// protocols do not match (crypto/tls rejects a hello with no common
	// protocol).
	c.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedProtos, alpnACME) {
			return acme, nil
		}
		return nil, nil
	}
	t.cfg[key] = c
	return c
}

// terminate does the TLS handshake of a client connection. A connection
// that was only an ACME TLS-ALPN-01 challenge is closed after it.
func (e *Edge) terminate(ctx context.Context, c net.Conn, ch *chain) (*tls.Conn, error) {
	tc := tls.Server(c, e.tls.get(ch))
	ctx, cancel := context.WithTimeout(ctx, e.handshakeTimeout())
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	if tc.ConnectionState().NegotiatedProtocol == alpnACME {
		tc.Close()
		return nil, errors.New("tls: answered an ACME TLS-ALPN-01 challenge")
	}
	return tc, nil
}
