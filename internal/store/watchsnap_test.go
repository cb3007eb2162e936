package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// A watch's first content is the whole bucket even while others write it:
// the edge and the agent take a key missing from it as deleted (a machine
// out of rotation, a host down, a worker removed).
func TestWatchFirstContentWholeUnderConcurrentWrites(t *testing.T) {
	srv, err := RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := Open(ctx, srv.URL(), "tok", "watch-test")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const keys = 40
	for i := range keys {
		if _, err := Put(ctx, st.Hosts, fmt.Sprintf("h%02d", i), map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := 0; wctx.Err() == nil; n++ {
				k := fmt.Sprintf("h%02d", (n*7+w*11)%keys)
				_, _ = Put(wctx, st.Hosts, k, map[string]int{"n": n})
			}
		})
	}
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
		if n < keys {
			short++
		}
	}
	stop()
	wg.Wait()
	if short > 0 {
		t.Fatalf("of %d watches started under concurrent writes, %d began with fewer than the %d keys", watches, short, keys)
	}
}
