package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// newNode starts node number i (mesh address fdaa::i) on a loopback UDP
// port; edit changes its config first.
func newNode(t *testing.T, i int, edit func(*Config)) *Node {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Key:         key,
		Addr:        netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i)),
		Region:      fmt.Sprintf("r%d", i),
		RTTInterval: 100 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("node", i),
	}
	if edit != nil {
		edit(&cfg)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// join gives every node all the others as peers.
func join(t *testing.T, nodes ...*Node) {
	t.Helper()
	var peers []Peer
	for _, n := range nodes {
		peers = append(peers, n.Self(loopback))
	}
	for _, n := range nodes {
		if err := n.SetPeers(peers); err != nil {
			t.Fatal(err)
		}
	}
	// Connected when every node has measured every other: the handshakes
	// are done (WireGuard retries a lost one after 5 s, hence the margin).
	eventually(t, 12*time.Second, "mesh connected", func() error {
		for _, n := range nodes {
			if got := len(n.RTTs()); got != len(nodes)-1 {
				return fmt.Errorf("node %s has RTTs to %d of %d peers", n.Addr(), got, len(nodes)-1)
			}
		}
		return nil
	})
}

// echoServer echoes every TCP connection on n's mesh address; returns the
// address to dial.
func echoServer(t *testing.T, n *Node) string {
	t.Helper()
	l, err := n.Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return l.Addr().String()
}

// roundTrip sends payload over a new mesh connection and checks it comes back.
func roundTrip(ctx context.Context, from *Node, addr string, payload []byte) error {
	c, err := from.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	errc := make(chan error, 1)
	go func() { _, err := c.Write(payload); errc <- err }()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return errors.New("echo differs from payload")
	}
	return nil
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// captureBind records every byte the node sends on its UDP socket.
type captureBind struct {
	conn.Bind
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *captureBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	c.mu.Lock()
	for _, b := range bufs {
		c.buf.Write(b)
	}
	c.mu.Unlock()
	return c.Bind.Send(bufs, ep)
}

func (c *captureBind) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf.Bytes())
}

func errorf(format string, a ...any) error { return fmt.Errorf(format, a...) }
