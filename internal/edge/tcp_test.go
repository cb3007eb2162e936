package edge

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	pires "github.com/pires/go-proxyproto"
)

// echoTCP is a raw TCP machine that sends back what it reads, then "bye"
// once the client has finished sending.
func echoTCP(c net.Conn) {
	io.Copy(c, c)
	io.WriteString(c, "bye")
}

func dialEdge(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

// Raw TCP (no handlers) carries bytes unchanged both ways, and a client's
// half-close reaches the machine, which can still answer.
func TestRawTCPByteForByte(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("db")
	w.serveOn("db", startTCP(t, "d1", "ams", "127.0.0.2", echoTCP), tcpPort(port))
	addr := w.listening(port)

	c := dialEdge(t, addr)
	data := make([]byte, 8<<20)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append([]byte{}, data...), "bye"...)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes back (sha %x), want the %d sent and \"bye\" (sha %x)", len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

// On a port of its own a raw TCP app gets the connection before the client
// says anything: protocols where the server speaks first (SMTP, MySQL)
// work.
func TestRawTCPServerSpeaksFirst(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("mail")
	w.serveOn("mail", startTCP(t, "m1", "ams", "127.0.0.2", func(c net.Conn) {
		io.WriteString(c, "220 mail.example ESMTP\r\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		io.WriteString(c, "250 you said "+line)
	}), tcpPort(port))
	addr := w.listening(port)

	c := dialEdge(t, addr)
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil || banner != "220 mail.example ESMTP\r\n" {
		t.Fatalf("banner %q (%v), want the machine's greeting before the client wrote", banner, err)
	}
	io.WriteString(c, "EHLO me\r\n")
	if line, _ := r.ReadString('\n'); line != "250 you said EHLO me\r\n" {
		t.Errorf("answer %q", line)
	}
}

// A raw TCP connection whose first machine refuses goes to the next.
func TestRawTCPRetriesRefusedMachine(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("db")
	w.serveOn("db", deadMachine(t, "dead", "ams", "127.0.0.2"), tcpPort(port))
	w.serveOn("db", startTCP(t, "alive", "fra", "127.0.0.3", echoTCP), tcpPort(port))
	addr := w.listening(port)

	c := dialEdge(t, addr)
	io.WriteString(c, "ping")
	c.CloseWrite()
	if got, _ := io.ReadAll(c); string(got) != "pingbye" {
		t.Errorf("got %q, want the live machine's echo", got)
	}
}

// proxyAware is a machine that reads PROXY protocol headers with the
// library apps use and answers with the client address it learnt.
func proxyAware(t *testing.T, id, ip string) *machine {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	pl := &pires.Listener{Listener: ln, ReadHeaderTimeout: 5 * time.Second}
	return serveListener(t, id, "ams", ip, pl, func(c net.Conn) {
		var authority string
		if h := c.(*pires.Conn).ProxyHeader(); h != nil {
			if tlvs, err := h.TLVs(); err == nil {
				for _, tlv := range tlvs {
					if tlv.Type == pires.PP2_TYPE_AUTHORITY {
						authority = string(tlv.Value)
					}
				}
			}
			fmt.Fprintf(c, "v%d ", h.Version)
		}
		fmt.Fprintf(c, "client=%s local=%s authority=%s", c.RemoteAddr(), c.LocalAddr(), authority)
	})
}

// A PROXY-protocol-aware app sees the real client's address and port, in
// either version, and with "tls" the name the client asked for (v2).
func TestProxyProtoTellsTheAppTheClient(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "pg.perch.local")
	w := newCertWorld(t, ca)
	v1, v2, tlsPort := freePort(t), freePort(t), freePort(t)
	w.app("pg")
	m := proxyAware(t, "p1", "127.0.0.2")
	w.serveOn("pg", m,
		tcpPort(v1, "proxy_proto"),
		api.Port{Port: v2, Handlers: []string{"proxy_proto"}, ProxyProtoOptions: &api.ProxyProtoOptions{Version: "v2"}},
		api.Port{Port: tlsPort, Handlers: []string{"tls", "proxy_proto"}, ProxyProtoOptions: &api.ProxyProtoOptions{Version: "v2"}},
	)
	w.listening(v1)
	w.listening(v2)
	w.listening(tlsPort)

	for _, tc := range []struct {
		port   int
		tls    bool
		prefix string
		auth   string
	}{{v1, false, "v1", ""}, {v2, false, "v2", ""}, {tlsPort, true, "v2", "pg.perch.local"}} {
		// The client comes from 127.0.0.9, which only the header can tell.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}, Timeout: 5 * time.Second}
		var c net.Conn
		var err error
		if tc.tls {
			c, err = tls.DialWithDialer(&d, "tcp", fmt.Sprintf("127.0.0.1:%d", tc.port), ca.clientTLS("pg.perch.local"))
		} else {
			c, err = d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.port))
		}
		if err != nil {
			t.Fatal(err)
		}
		local := c.LocalAddr().String()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(c)
		c.Close()
		want := fmt.Sprintf("%s client=%s local=127.0.0.1:%d authority=%s", tc.prefix, local, tc.port, tc.auth)
		if string(got) != want {
			t.Errorf("port %d: app says %q, want %q", tc.port, got, want)
		}
	}
}

// tlsMachine is a machine that terminates TLS itself with a certificate
// of its own CA and answers with the name the client asked for.
func tlsMachine(t *testing.T, id, ip string, ca *testCA, name string) *machine {
	t.Helper()
	cert, err := ca.leaf(name)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", net.JoinHostPort(ip, "0"), &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	return serveListener(t, id, "ams", ip, ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			return
		}
		fmt.Fprintf(c, "%s answers %s", id, tc.ConnectionState().ServerName)
	})
}

// On one port an app that terminates TLS itself (no handlers) and apps
// whose TLS the edge terminates live side by side: the server name picks
// the app, and the passthrough app's own certificate reaches its clients.
func TestTLSPassthroughOnSharedPort(t *testing.T) {
	edgeCA := newTestCA(t, "edge-ca", "shop.perch.local")
	appCA := newTestCA(t, "vault-own-ca")
	w := newCertWorld(t, edgeCA)
	port := freePort(t)
	w.app("shop")
	w.app("vault", "vault.example.com")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), tcpPort(port, "tls", "http"))
	vault := tlsMachine(t, "v1", "127.0.0.3", appCA, "vault.example.com")
	w.serveOn("vault", vault, tcpPort(port))
	addr := w.listening(port)

	c, err := tls.Dial("tcp", addr, appCA.clientTLS("vault.example.com"))
	if err != nil {
		t.Fatalf("TLS to the passthrough app, verified with the app's own CA: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	leaf := c.ConnectionState().PeerCertificates[0]
	got, _ := io.ReadAll(c)
	c.Close()
	if leaf.Subject.Organization[0] != "vault-own-ca" || string(got) != "v1 answers vault.example.com" {
		t.Errorf("passthrough: certificate of %v, answer %q; want the app's own certificate and answer", leaf.Subject, got)
	}

	res, body := httpsGet(t, tlsClient(edgeCA), addr, "shop.perch.local", "/")
	if res.StatusCode != 200 || answeredBy(t, body).Machine != "s1" || res.TLS.PeerCertificates[0].Subject.Organization[0] != "edge-ca" {
		t.Errorf("terminated app on the same port: %d %q", res.StatusCode, body)
	}

	// The raw TCP app owns the port's other traffic: names no app has,
	// and connections that are not TLS at all.
	c, err = tls.Dial("tcp", addr, &tls.Config{ServerName: "other.example", InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS for an unknown name: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _ = io.ReadAll(c)
	c.Close()
	if string(got) != "v1 answers other.example" {
		t.Errorf("unknown name: %q, want the raw TCP app to get it", got)
	}
	before := vault.hits.Load()
	pc := dialEdge(t, addr)
	io.WriteString(pc, "GET / HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	pc.CloseWrite()
	if got, _ := io.ReadAll(pc); strings.Contains(string(got), "perch") {
		t.Errorf("plain bytes: edge answered %q; they are the raw TCP app's", got)
	}
	if vault.hits.Load() != before+1 {
		t.Errorf("plain bytes did not reach the raw TCP app")
	}
}

// Stopping the edge closes the raw TCP connections it carries and frees
// the port at once, even with a client connected that sends nothing.
func TestStopClosesRawConnections(t *testing.T) {
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	raw, shared := freePort(t), freePort(t)
	w.app("db")
	w.app("web")
	w.serveOn("db", startTCP(t, "d1", "ams", "127.0.0.2", echoTCP), tcpPort(raw), tcpPort(shared))
	w.serveOn("web", startMachine(t, "w1", "ams", "127.0.0.3", nil), tcpPort(shared, "tls", "http"))
	rawAddr, sharedAddr := w.listening(raw), w.listening(shared)

	c1 := dialEdge(t, rawAddr)
	io.WriteString(c1, "x")
	if b := make([]byte, 1); func() bool { _, err := io.ReadFull(c1, b); return err != nil }() {
		t.Fatal("no echo before stopping")
	}
	c2 := dialEdge(t, sharedAddr) // waits in the peek
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of stopping with connections open")
	}
	for _, c := range []net.Conn{c1, c2} {
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("a connection stayed open after the edge stopped")
		}
	}
}
