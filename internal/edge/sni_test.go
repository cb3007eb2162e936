package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"testing"
	"time"
)

// helloConn records what a TLS client writes and fails its first read, so
// a client handshake stops right after the ClientHello.
type helloConn struct {
	net.Conn
	out bytes.Buffer
}

func (c *helloConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *helloConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *helloConn) Close() error                     { return nil }
func (c *helloConn) SetDeadline(time.Time) error      { return nil }
func (c *helloConn) SetReadDeadline(time.Time) error  { return nil }
func (c *helloConn) SetWriteDeadline(time.Time) error { return nil }
func (c *helloConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *helloConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// clientHelloBytes is the ClientHello crypto/tls sends with cfg.
func clientHelloBytes(cfg *tls.Config) []byte {
	c := &helloConn{}
	_ = tls.Client(c, cfg).Handshake()
	return c.out.Bytes()
}

// fragment re-cuts the handshake messages of TLS records into records of
// at most n bytes each, as a client may.
func fragment(records []byte, n int) []byte {
	var msg []byte
	for len(records) >= 5 {
		l := int(records[3])<<8 | int(records[4])
		msg = append(msg, records[5:5+l]...)
		records = records[5+l:]
	}
	var out []byte
	for len(msg) > 0 {
		k := min(n, len(msg))
		out = append(out, 0x16, 3, 1, byte(k>>8), byte(k))
		out = append(out, msg[:k]...)
		msg = msg[k:]
	}
	return out
}

func TestParseClientHello(t *testing.T) {
	hello := clientHelloBytes(&tls.Config{ServerName: "Shop.Example.COM", NextProtos: []string{"h2", "http/1.1"}})
	for _, data := range [][]byte{hello, fragment(hello, 7), fragment(hello, 1)} {
		h, need, err := parseClientHello(data)
		if err != nil || need != 0 {
			t.Fatalf("parse: need %d, %v", need, err)
		}
		if h.serverName != "shop.example.com" || !slices.Equal(h.alpn, []string{"h2", "http/1.1"}) {
			t.Errorf("parsed name %q ALPN %q, want shop.example.com and [h2 http/1.1]", h.serverName, h.alpn)
		}
		// Every cut short prefix asks for more, never fails.
		for i := 0; i < len(data); i += 1 + len(data)/50 {
			if _, need, err := parseClientHello(data[:i]); err != nil || need <= i {
				t.Fatalf("prefix of %d bytes: need %d, %v; want a request for more", i, need, err)
			}
		}
	}
	noSNI := clientHelloBytes(&tls.Config{InsecureSkipVerify: true})
	if h, _, err := parseClientHello(noSNI); err != nil || h.serverName != "" {
		t.Errorf("hello without SNI: %q %v", h.serverName, err)
	}
	for _, bad := range [][]byte{[]byte("GET / HTTP/1.1\r\n"), {0x16, 3, 1, 0, 0}, {0x16, 3, 1, 0, 4, 2, 0, 0, 0}} {
		if _, _, err := parseClientHello(bad); err == nil {
			t.Errorf("parse of %q succeeded", bad)
		}
	}
}

// stdlibHello is what crypto/tls's own server reads from data: the
// ClientHelloInfo, if it got that far.
func stdlibHello(data []byte) (*tls.ClientHelloInfo, bool) {
	var got *tls.ClientHelloInfo
	stop := errors.New("stop")
	srv := tls.Server(&replayConn{r: bytes.NewReader(data)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			got = h
			return nil, stop
		},
	})
	_ = srv.Handshake()
	return got, got != nil
}

type replayConn struct {
	helloConn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// FuzzClientHello checks that the peek never panics, and agrees with
// crypto/tls: whenever crypto/tls reads a ClientHello from the bytes, the
// peek finds the same server name and ALPN list.
func FuzzClientHello(f *testing.F) {
	hello := clientHelloBytes(&tls.Config{ServerName: "app.perch.local", NextProtos: []string{"h2", "http/1.1"}})
	f.Add(hello)
	f.Add(fragment(hello, 50))
	f.Add(clientHelloBytes(&tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12}))
	f.Add(clientHelloBytes(&tls.Config{ServerName: "x.example.", NextProtos: []string{alpnACME}}))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, need, err := parseClientHello(data)
		if err == nil && need != 0 && need <= len(data) {
			t.Fatalf("need %d bytes but has %d", need, len(data))
		}
		std, ok := stdlibHello(data)
		if !ok {
			return
		}
		if err != nil || need != 0 {
			t.Fatalf("crypto/tls read a ClientHello (name %q) the peek did not: need %d, %v", std.ServerName, need, err)
		}
		if h.serverName != normalizeSNI(std.ServerName) || !slices.Equal(h.alpn, std.SupportedProtos) {
			t.Fatalf("peek read name %q ALPN %q, crypto/tls %q %q", h.serverName, h.alpn, std.ServerName, std.SupportedProtos)
		}
	})
}
