package store

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func openTestStores(t *testing.T, n int) []*Store {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	srv, err := RunEmbedded(t.TempDir(), addr, "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	var out []*Store
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st, err := Open(ctx, srv.URL(), "tok", "lease-test")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(st.Close)
		out = append(out, st)
	}
	return out
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
	return time.Since(start)
}

// TestRunHeldOneHolderAndTakeover: of two processes asking for one lease,
// one runs; when it stops, the other takes over at once; a holder that died
// without releasing (its key left behind) is taken over after the TTL.
func TestRunHeldOneHolderAndTakeover(t *testing.T) {
	sts := openTestStores(t, 2)
	log := slog.New(slog.DiscardHandler)
	const ttl = 900 * time.Millisecond
	var running [2]atomic.Bool
	var both atomic.Bool
	ctxs := make([]context.CancelFunc, 2)
	done := make([]chan struct{}, 2)
	for i, st := range sts {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i], done[i] = cancel, make(chan struct{})
		go func() {
			defer close(done[i])
			st.RunHeld(ctx, "test", ttl, log, func(ctx context.Context) {
				running[i].Store(true)
				if running[1-i].Load() {
					both.Store(true)
				}
				<-ctx.Done()
				running[i].Store(false)
			})
		}()
	}
	t.Cleanup(func() { ctxs[0](); ctxs[1](); <-done[0]; <-done[1] })
	waitFor(t, 5*time.Second, "one holder runs", func() bool { return running[0].Load() || running[1].Load() })
	holder := 0
	if running[1].Load() {
		holder = 1
	}
	// Hold for several refreshes: the other must not run meanwhile.
	time.Sleep(3 * ttl) // the property is that nothing happens during it
	if both.Load() || running[1-holder].Load() {
		t.Fatal("both processes ran under one lease")
	}
	ctxs[holder]()
	<-done[holder]
	took := waitFor(t, 5*time.Second, "the other takes over after the holder released", func() bool { return running[1-holder].Load() })
	t.Logf("takeover after release: %v", took)

	// A holder that died: its key stays, not refreshed.
	if _, err := sts[0].Locks.Create(context.Background(), "lease.dead", []byte("ghost")); err != nil {
		t.Fatal(err)
	}
	var got atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		sts[1].RunHeld(ctx, "dead", ttl, log, func(ctx context.Context) { got.Store(true); <-ctx.Done() })
	}()
	took = waitFor(t, 10*time.Second, "takeover from a dead holder", got.Load)
	cancel()
	<-fin
	if took < ttl/2 {
		t.Errorf("took over a live-looking lease after %v, before its TTL %v", took, ttl)
	}
	t.Logf("takeover from a dead holder: %v (ttl %v)", took, ttl)
}

// LeaseHolders names the holder of each lease by its store's Holder, and
// a lease whose holder stopped is gone from it.
func TestLeaseHolders(t *testing.T) {
	sts := openTestStores(t, 1)
	st := sts[0]
	st.opts.Holder = "s1"
	before := time.Now().Add(-time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	held := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.RunHeld(ctx, "job", 3*time.Second, slog.New(slog.DiscardHandler), func(ctx context.Context) {
			close(held)
			<-ctx.Done()
		})
	}()
	<-held
	hs, err := st.LeaseHolders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if hs["job"] != "s1" {
		t.Fatalf("holders %v, want job held by s1", hs)
	}
	// Since is when it was taken, kept across refreshes (every ttl/3).
	var ls []Lease
	waitFor(t, 10*time.Second, "the lease refreshed", func() bool {
		ls, err = st.Leases(context.Background())
		return err == nil && len(ls) == 1 && ls[0].Refreshed.Sub(ls[0].Since) > 500*time.Millisecond
	})
	if l := ls[0]; l.Name != "job" || l.Holder != "s1" || l.Since.Before(before) || l.Since.After(time.Now()) {
		t.Errorf("lease %+v: want job held by s1 since the test began (%v)", l, before)
	}
	cancel()
	<-done
	waitFor(t, 10*time.Second, "the released lease leaves the holders", func() bool {
		hs, err := st.LeaseHolders(context.Background())
		return err == nil && hs["job"] == ""
	})
}
