package store

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestTryLockOneHolder: of many processes trying one lock at once exactly
// one gets it; once released the next try gets it; a lock whose holder
// died is taken over after its TTL, and only once.
func TestTryLockOneHolder(t *testing.T) {
	sts := openTestStores(t, 4)
	ctx := context.Background()
	var won atomic.Int32
	var releases sync.Map
	var wg sync.WaitGroup
	for i, st := range sts {
		wg.Go(func() {
			release, ok, err := st.TryLock(ctx, "autostop.app.iad", time.Minute)
			if err != nil {
				t.Error(err)
			}
			if ok {
				won.Add(1)
				releases.Store(i, release)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d holders at once; want 1", won.Load())
	}
	releases.Range(func(_, r any) bool { r.(func())(); return true })
	release, ok, err := sts[0].TryLock(ctx, "autostop.app.iad", time.Minute)
	if err != nil || !ok {
		t.Fatalf("after release: ok %v, %v; want the lock", ok, err)
	}
	_ = release // this holder "dies" holding it

	const ttl = 300 * time.Millisecond
	if _, ok, _ := sts[1].TryLock(ctx, "autostop.app.iad", ttl); ok {
		t.Fatal("took a lock held for less than its TTL")
	}
	waitFor(t, 5*time.Second, "the lock of a dead holder taken over after its TTL", func() bool {
		var n atomic.Int32
		var wg sync.WaitGroup
		for _, st := range sts[1:] {
			wg.Go(func() {
				if _, ok, _ := st.TryLock(ctx, "autostop.app.iad", ttl); ok {
					n.Add(1)
				}
			})
		}
		wg.Wait()
		if n.Load() > 1 {
			t.Fatalf("%d took over one dead holder's lock; want 1", n.Load())
		}
		return n.Load() == 1
	})
}
