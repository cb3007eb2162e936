package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// busyKeys is how many keys busyHosts keeps rewriting.
const busyKeys = 40

type busyRec struct {
	K string
	N int
}

// busyHosts is a store whose hosts bucket holds busyKeys keys that four
// clients keep rewriting (hosts heartbeating, machines changing) until the
// test ends.
func busyHosts(t *testing.T) (context.Context, *Store) {
	t.Helper()
	srv, err := RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	st, err := Open(ctx, srv.URL(), "tok", "busy-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	for i := range busyKeys {
		k := fmt.Sprintf("h%02d", i)
		if _, err := Put(ctx, st.Hosts, k, busyRec{K: k}); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := 0; wctx.Err() == nil; n++ {
				k := fmt.Sprintf("h%02d", (n*7+w*11)%busyKeys)
				_, _ = Put(wctx, st.Hosts, k, busyRec{K: k, N: n})
			}
		})
	}
	t.Cleanup(func() { stop(); wg.Wait() })
	return ctx, st
}

// TestListUnderConcurrentWrites: a List made while other clients keep
// writing the bucket returns every key that existed before it started,
// each once. NATS's watcher may signal the end of its initial values early
// when writes land during it (the per-message pending count can reach 0
// and rise again: nats-io/nats.py #995, nats-server #4824); a scheduler
// that saw such a partial list of hosts said "no host in region lhr" in CI.
func TestListUnderConcurrentWrites(t *testing.T) {
	ctx, st := busyHosts(t)
	short, dup := 0, 0
	const lists = 300
	for range lists {
		got, err := List[busyRec](ctx, st.Hosts, ">")
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, r := range got {
			if seen[r.K] {
				dup++
			}
			seen[r.K] = true
		}
		if len(seen) < busyKeys {
			short++
		}
	}
	if short > 0 || dup > 0 {
		t.Fatalf("of %d lists under concurrent writes, %d missed keys and %d had a key twice", lists, short, dup)
	}
}

// A watch's first content is the whole bucket even while others write it:
// the edge and the agent take a key missing from it as deleted (a machine
// out of rotation, a host down, a worker removed).
func TestWatchFirstContentWholeUnderConcurrentWrites(t *testing.T) {
	ctx, st := busyHosts(t)
	short := 0
	const watches = 60
	for range watches {
		wc, done := context.WithCancel(ctx)
		n := -1
		st.Watch(wc, st.Hosts, nil, func(c Change) {
			if c.All != nil {
				n = len(c.All)
				done()
			}
		})
		done()
		if n < busyKeys {
			short++
		}
	}
	if short > 0 {
		t.Fatalf("of %d watches started under concurrent writes, %d began with fewer than the %d keys", watches, short, busyKeys)
	}
}
