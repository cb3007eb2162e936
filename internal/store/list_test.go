package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// TestListUnderConcurrentWrites: a List made while other clients keep
// writing the bucket (hosts heartbeating, machines changing) returns every
// key that existed before it started, each once. NATS's watcher may signal
// the end of its initial values early when writes land during it (the
// per-message pending count can reach 0 and rise again: nats-io/nats.py
// #995, nats-server #4824); a scheduler that saw such a partial list of
// hosts said "no host in region lhr" in CI.
func TestListUnderConcurrentWrites(t *testing.T) {
	dir := t.TempDir()
	srv, err := RunEmbedded(dir, "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := Open(ctx, srv.URL(), "tok", "list-test")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const keys = 40
	type rec struct {
		K string
		N int
	}
	for i := range keys {
		if _, err := Put(ctx, st.Hosts, fmt.Sprintf("h%02d", i), rec{K: fmt.Sprintf("h%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := 0; wctx.Err() == nil; n++ {
				k := fmt.Sprintf("h%02d", (n*7+w*11)%keys)
				_, _ = Put(wctx, st.Hosts, k, rec{K: k, N: n})
			}
		})
	}
	short, dup := 0, 0
	const lists = 300
	for range lists {
		got, err := List[rec](ctx, st.Hosts, ">")
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
		if len(seen) < keys {
			short++
		}
	}
	stop()
	wg.Wait()
	if short > 0 || dup > 0 {
		t.Fatalf("of %d lists under concurrent writes, %d missed keys and %d had a key twice", lists, short, dup)
	}
}
