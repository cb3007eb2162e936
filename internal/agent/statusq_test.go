package agent

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// blackhole relays TCP to target until cut: from then on every byte in
// either direction is dropped and the connections stay open, as a
// region's link looks while its packets are dropped; restore closes them
// (as the client's pings would find them dead) and relays again.
type blackhole struct {
	ln    net.Listener
	drop  atomic.Bool
	mu    sync.Mutex
	conns []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln}
	t.Cleanup(func() { ln.Close(); b.closeAll() })
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				dst.Close()
				return
			}
			if b.drop.Load() {
				continue
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				src.Close()
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if b.drop.Load() {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, u)
			b.mu.Unlock()
			go pipe(u, c)
			go pipe(c, u)
		}
	}()
	return b
}

func (b *blackhole) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
}

func (b *blackhole) restore() {
	b.closeAll()
	b.drop.Store(false)
}

// TestStatusQueuedDuringCut: a machine's status written while the link
// to the control plane drops every packet is lost on the wire (the
// connection does not know yet); the agent queues it and writes it once
// the link is back, unless a newer status of the machine was written
// first, which it never overwrites.
func TestStatusQueuedDuringCut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hub, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Shutdown)
	srv, err := store.Open(ctx, hub.URL(), "tok", "server")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	link := newBlackhole(t, hub.URL()[len("nats://"):])
	st, err := store.Open(ctx, "nats://"+link.ln.Addr().String(), "tok", "host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	a := &Agent{st: st, log: slog.New(slog.DiscardHandler)}
	status := func(state string, gen int64) store.MachineStatus {
		return store.MachineStatus{ID: "m1", App: "app", State: state, Generation: gen}
	}
	if err := a.putStatus(ctx, "app.m1", status(api.StateStarted, 1)); err != nil {
		t.Fatal(err)
	}
	if err := a.putStatus(ctx, "app.m2", status(api.StateStarted, 1)); err != nil {
		t.Fatal(err)
	}

	link.drop.Store(true)
	// As a worker writes: its context has no deadline, so JetStream's
	// own (5 s) bounds the wait for the acknowledgement.
	wctx := context.Background()
	if err := a.putStatus(wctx, "app.m1", status(api.StateStopped, 2)); err == nil {
		t.Fatal("a status write through a cut link succeeded")
	}
	if err := a.putStatus(wctx, "app.m2", status(api.StateStopped, 2)); err == nil {
		t.Fatal("a status write through a cut link succeeded")
	}
	reconnected := st.Reconnected()
	link.restore()
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("the host did not reconnect after the link returned")
	}
	// m2 changes again before the queue runs: the newer status stays.
	if err := a.putStatus(ctx, "app.m2", status(api.StateDestroyed, 3)); err != nil {
		t.Fatal(err)
	}
	get := func(key string) store.MachineStatus {
		s, _, err := store.Get[store.MachineStatus](ctx, srv.Status, key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := get("app.m1"); s.State != api.StateStarted {
		t.Fatalf("m1's status written during the cut arrived by itself (%s): the test cannot tell the queue's work", s.State)
	}
	qctx, qcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.runStatusQueue(qctx) }()
	for {
		s := get("app.m1")
		a.statusQ.mu.Lock()
		left := len(a.statusQ.pending)
		a.statusQ.mu.Unlock()
		if s.State == api.StateStopped && s.Generation == 2 && left == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("m1's status queued during the cut did not arrive: %s gen %d, %d queued", s.State, s.Generation, left)
		}
		time.Sleep(50 * time.Millisecond)
	}
	qcancel()
	<-done
	if s := get("app.m2"); s.State != api.StateDestroyed || s.Generation != 3 {
		t.Errorf("m2's newer status was overwritten by the one queued during the cut: %s gen %d", s.State, s.Generation)
	}
}
