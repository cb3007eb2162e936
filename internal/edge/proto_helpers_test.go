package edge

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// testCA is a certificate authority made for one test. As a CertSource it
// issues a certificate for the names it was told, the way the real one
// only has certificates for apps' names.
type testCA struct {
	name string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool

	mu    sync.Mutex
	names []string
	certs map[string]*tls.Certificate
}

var _ CertSource = (*testCA)(nil)

func newTestCA(t testing.TB, name string, names ...string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{name: name, cert: cert, key: key, pool: pool, names: names, certs: map[string]*tls.Certificate{}}
}

// leaf is a certificate for host signed by the CA.
func (ca *testCA) leaf(host string) (*tls.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if c := ca.certs[host]; c != nil {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host, Organization: []string{ca.name}},
		DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	ca.certs[host] = c
	return c, nil
}

func (ca *testCA) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if !slices.Contains(ca.names, hello.ServerName) {
		return nil, fmt.Errorf("no certificate for %q", hello.ServerName)
	}
	return ca.leaf(hello.ServerName)
}

func (ca *testCA) HTTPChallenge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/acme-challenge/test-token" {
			fmt.Fprint(w, "test-token.key-authorization")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// clientTLS is a client config that trusts the CA, for server name.
func (ca *testCA) clientTLS(serverName string, protos ...string) *tls.Config {
	return &tls.Config{RootCAs: ca.pool, ServerName: serverName, NextProtos: protos}
}

// newCertWorld is a world whose edge listens on 127.0.0.1 with ca as its
// certificate source, running until the test ends.
func newCertWorld(t *testing.T, ca *testCA) *world {
	t.Helper()
	cfg := Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t)}
	if ca != nil {
		cfg.Certs = ca
	}
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	run(t, e)
	return w
}

// serveOn places m in app as a machine of one service whose internal port
// is m's and whose public ports are ports, started.
func (w *world) serveOn(app string, m *machine, ports ...api.Port) {
	if _, ok := w.e.table.hosts["h-"+m.region]; !ok {
		w.host(m.region, "up")
	}
	w.e.table.setMachine(store.MachineKey(app, m.id), store.MachineSpec{
		ID: m.id, App: app, Region: m.region, HostID: "h-" + m.region, PrivateIP: m.ip,
		Desired: store.DesireStarted, UpdatedAt: time.Now(),
		Config: api.MachineConfig{Services: []api.Service{{Protocol: "tcp", InternalPort: m.port, Ports: ports}}},
	})
	w.state(app, m, api.StateStarted)
}

// listening commits the table and waits until the edge accepts on port.
func (w *world) listening(port int) string {
	w.t.Helper()
	w.commit()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitFor(w.t, "the edge to listen on "+addr, func() bool { return slices.Contains(w.e.Listening(), port) })
	return addr
}

// startTCP runs a fake machine that speaks raw TCP: serve gets each
// connection and closes it when done.
func startTCP(t testing.TB, id, region, ip string, serve func(net.Conn)) *machine {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	return serveListener(t, id, region, ip, ln, serve)
}

// serveListener runs serve for each connection of ln until the test ends.
func serveListener(t testing.TB, id, region, ip string, ln net.Listener, serve func(net.Conn)) *machine {
	t.Helper()
	m := &machine{id: id, region: region, ip: ip, port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			m.hits.Add(1)
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				serve(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return m
}

func tcpPort(p int, handlers ...string) api.Port { return api.Port{Port: p, Handlers: handlers} }
