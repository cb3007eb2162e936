package edge

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// tlsClient is Go's HTTP client trusting ca, with HTTP/2 when offered.
func tlsClient(ca *testCA, protos ...string) *http.Client {
	tr := &http.Transport{TLSClientConfig: ca.clientTLS("", protos...), ForceAttemptHTTP2: true, DisableKeepAlives: true}
	if len(protos) == 1 && protos[0] == "http/1.1" {
		tr.ForceAttemptHTTP2 = false
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func httpsGet(t *testing.T, c *http.Client, addr, host, path string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+host+path, nil)
	req.URL.Host = addr
	req.Host = host
	c.Transport.(*http.Transport).TLSClientConfig.ServerName = host
	return do(t, c, req)
}

func TestTLSTerminationServesHTTP2AndHTTP1(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("shop")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), tcpPort(port, "tls", "http"))
	addr := w.listening(port)

	res, body := httpsGet(t, tlsClient(ca), addr, "shop.perch.local", "/")
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 2 {
		t.Fatalf("got %s %d %q, want a 200 over HTTP/2", res.Proto, res.StatusCode, body)
	}
	if res.TLS.Version != tls.VersionTLS13 || res.TLS.NegotiatedProtocol != "h2" {
		t.Errorf("TLS version %x, ALPN %q; want TLS 1.3 and h2", res.TLS.Version, res.TLS.NegotiatedProtocol)
	}
	e := answeredBy(t, body)
	if got := e.Headers.Get("X-Forwarded-Proto"); got != "https" {
		t.Errorf("machine saw X-Forwarded-Proto %q, want https", got)
	}
	if e.Host != "shop.perch.local" || e.Headers.Get("Via") != "2 perch" {
		t.Errorf("machine saw Host %q, Via %q; want the client's host and an HTTP/2 hop", e.Host, e.Headers.Get("Via"))
	}

	res, body = httpsGet(t, tlsClient(ca, "http/1.1"), addr, "shop.perch.local", "/")
	if res.StatusCode != http.StatusOK || res.ProtoMajor != 1 || res.TLS.NegotiatedProtocol != "http/1.1" {
		t.Fatalf("HTTP/1.1 client: got %s %d ALPN %q, want a 200 over HTTP/1.1", res.Proto, res.StatusCode, res.TLS.NegotiatedProtocol)
	}
	if answeredBy(t, body).Machine != "s1" {
		t.Errorf("answered by %q", body)
	}
}

func TestTLSOptions(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "old.perch.local", "new.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("old")
	w.app("new")
	w.serveOn("old", startMachine(t, "o1", "ams", "127.0.0.2", nil), api.Port{
		Port: port, Handlers: []string{"tls", "http"},
		TLSOptions: &api.TLSOptions{ALPN: []string{"http/1.1"}, Versions: []string{"TLSv1.2"}},
	})
	w.serveOn("new", startMachine(t, "n1", "ams", "127.0.0.3", nil), api.Port{
		Port: port, Handlers: []string{"tls", "http"}, TLSOptions: &api.TLSOptions{Versions: []string{"TLSv1.3"}},
	})
	addr := w.listening(port)

	res, _ := httpsGet(t, tlsClient(ca), addr, "old.perch.local", "/")
	if res.ProtoMajor != 1 || res.TLS.Version != tls.VersionTLS12 {
		t.Errorf("old: %s over TLS %x, want HTTP/1.1 (alpn) over TLS 1.2 (versions)", res.Proto, res.TLS.Version)
	}
	res, _ = httpsGet(t, tlsClient(ca), addr, "new.perch.local", "/")
	if res.ProtoMajor != 2 || res.TLS.Version != tls.VersionTLS13 {
		t.Errorf("new: %s over TLS %x, want HTTP/2 over TLS 1.3", res.Proto, res.TLS.Version)
	}
	cfg := ca.clientTLS("new.perch.local")
	cfg.MaxVersion = tls.VersionTLS12
	if c, err := tls.Dial("tcp", addr, cfg); err == nil {
		c.Close()
		t.Errorf("a TLS 1.2 client reached an app that allows only TLS 1.3")
	}
}

// A name no app has gets no certificate; plain HTTP to a TLS-only port
// gets a 400 that says to use https.
func TestTLSUnknownNameAndPlainHTTP(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("shop")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), tcpPort(port, "tls", "http"))
	addr := w.listening(port)

	if c, err := tls.Dial("tcp", addr, ca.clientTLS("nope.example")); err == nil {
		c.Close()
		t.Errorf("handshake for a name no app has succeeded")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("plain HTTP to a TLS port: %v", err)
	}
	b, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "use https://") {
		t.Errorf("plain HTTP to a TLS port: %d %q, want 400 saying to use https", r.StatusCode, b)
	}
}

// An ACME server's TLS-ALPN-01 probe (ALPN acme-tls/1 only) completes a
// handshake with the certificate source's answer, then the edge hangs up;
// clients offering other protocols never see acme-tls/1.
func TestACMETLSALPN(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("shop")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), tcpPort(port, "tls", "http"))
	addr := w.listening(port)

	c, err := tls.Dial("tcp", addr, ca.clientTLS("shop.perch.local", alpnACME))
	if err != nil {
		t.Fatalf("acme-tls/1 handshake: %v", err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != alpnACME {
		t.Errorf("negotiated %q, want %s", p, alpnACME)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || isNetTimeout(err) {
		t.Errorf("after an acme-tls/1 handshake the edge kept the connection open (%v)", err)
	}
}

func isNetTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestForceHTTPS(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("shop")
	w.app("blog")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), api.Port{Port: port, Handlers: []string{"http"}, ForceHTTPS: true})
	w.serveOn("blog", startMachine(t, "b1", "ams", "127.0.0.3", nil), api.Port{Port: port, Handlers: []string{"http"}})
	addr := w.listening(port)

	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", "http://"+addr+"/cart?item=2", nil)
	req.Host = "shop.perch.local:" + strings.Split(addr, ":")[1]
	res, _ := do(t, noFollow, req)
	if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "https://shop.perch.local/cart?item=2" {
		t.Errorf("force_https: %d Location %q, want 301 to https://shop.perch.local/cart?item=2", res.StatusCode, res.Header.Get("Location"))
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/.well-known/acme-challenge/test-token", nil)
	req.Host = "shop.perch.local"
	if res, body := do(t, noFollow, req); res.StatusCode != http.StatusOK || body != "test-token.key-authorization" {
		t.Errorf("ACME HTTP-01 challenge on a force_https port: %d %q, want the certificate source's answer", res.StatusCode, body)
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "blog.perch.local"
	if res, body := do(t, noFollow, req); res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "b1" {
		t.Errorf("app without force_https on the same port: %d %q", res.StatusCode, body)
	}
}

// One port can carry plain HTTP for one app and TLS for another: the first
// byte tells them apart. An app that asked for TLS is not served in the
// clear there.
func TestPlainAndTLSAppsShareAPort(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	w.app("shop")
	w.app("blog")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), tcpPort(port, "tls", "http"))
	w.serveOn("blog", startMachine(t, "b1", "ams", "127.0.0.3", nil), tcpPort(port, "http"))
	addr := w.listening(port)

	res, body := httpsGet(t, tlsClient(ca), addr, "shop.perch.local", "/")
	if res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "s1" {
		t.Errorf("TLS app: %d %q", res.StatusCode, body)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "blog.perch.local"
	if res, body := do(t, plain, req); res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "b1" {
		t.Errorf("plain app: %d %q", res.StatusCode, body)
	}
	req, _ = http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "shop.perch.local"
	if res, body := do(t, plain, req); res.StatusCode != http.StatusBadRequest || !strings.Contains(body, "use https://") {
		t.Errorf("TLS app asked in the clear: %d %q, want 400 saying to use https", res.StatusCode, body)
	}
}
