package edge

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/store"
)

// resumes connects to addr with the client's session cache and says
// whether the handshake resumed a session.
func resumes(t *testing.T, cfg *tls.Config, addr string) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	// TLS 1.3 tickets arrive after the handshake: read until the
	// server's first answer so the client has stored the ticket.
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: shop.perch.local\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("read answer from %s: %v", addr, err)
	}
	return c.ConnectionState().DidResume
}

// Two edges of a region share their session ticket keys through the
// store: a session made on one resumes on the other, across a rotation,
// until the key it was sealed with is gone.
func TestSessionResumesOnAnotherEdgeOfTheRegion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nats, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "secret", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	st, err := store.Open(ctx, nats.URL(), "secret", "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)

	ca := newTestCA(t, "edge-ca", "shop.perch.local")
	m := startMachine(t, "s1", "ams", "127.0.0.2", nil)
	var addrs []string
	var edges []*Edge
	for range 2 {
		w := newCertWorld(t, ca)
		port := freePort(t)
		w.app("shop")
		w.serveOn("shop", m, tcpPort(port, "tls", "http"))
		addrs = append(addrs, w.listening(port))
		edges = append(edges, w.e)
	}
	now := time.Now()
	sync := func(at time.Time) {
		t.Helper()
		for _, e := range edges {
			if err := e.syncTickets(ctx, st.Tickets, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	client := func() *tls.Config {
		c := ca.clientTLS("shop.perch.local", "http/1.1")
		c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		return c
	}

	// Before the edges read the region's keys each has its own: no
	// resumption across edges (the test can tell).
	c := client()
	if resumes(t, c, addrs[0]) || resumes(t, c, addrs[1]) {
		t.Fatal("a session resumed on another edge before the edges shared keys")
	}

	sync(now)
	c = client()
	if resumes(t, c, addrs[0]) {
		t.Fatal("first connection resumed")
	}
	if !resumes(t, c, addrs[1]) {
		t.Fatal("a session made on edge A did not resume on edge B of the same region")
	}

	// A session sealed before a rotation resumes after it: the old key
	// still decrypts.
	c = client()
	resumes(t, c, addrs[0])
	sync(now.Add(ticketRotation + time.Minute))
	if !resumes(t, c, addrs[1]) {
		t.Fatal("a session sealed with the previous key did not resume after the rotation")
	}
	// The new key is the one in use: a session made now resumes on the
	// other edge too.
	c = client()
	resumes(t, c, addrs[1])
	if !resumes(t, c, addrs[0]) {
		t.Fatal("a session sealed with the rotated key did not resume on the other edge")
	}
	// Once its key has been retired (ticketKeep after the next one
	// started), a ticket no longer resumes.
	c = client()
	resumes(t, c, addrs[0]) // sealed with the key of the second period
	sync(now.Add(3*ticketRotation + ticketKeep + 2*time.Minute))
	if resumes(t, c, addrs[1]) {
		t.Error("a ticket sealed with a retired key still resumed")
	}
}
