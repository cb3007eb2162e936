package server

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/store"
)

// clusterLockTTL is how long a lock taken by a server that then died
// blocks the others: they take it over after that. Placement holds it
// for a few store writes.
const clusterLockTTL = 10 * time.Second

// clusterLock is a mutex across the servers of a cluster: a local mutex
// and, clustered, the short lock "lock.<name>" in perch_locks
// (store.TryLock), taken over from a holder that died after
// clusterLockTTL. Placement (placeMu) and subnet assignment (hostMu) run
// under one, so any server may take a write and two never place into the
// same room or address (ARCHITECTURE invariant 4).
type clusterLock struct {
	name string
	mu   sync.Mutex
	// st is nil for a server alone: the local mutex is the whole lock.
	st      *store.Store
	log     *slog.Logger
	release func()
}

// Lock waits for the lock. While the cluster's JetStream has no quorum
// it keeps trying: no placement is safe then.
func (l *clusterLock) Lock() {
	l.mu.Lock()
	if l.st == nil {
		return
	}
	wait, warned := 5*time.Millisecond, time.Time{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rel, ok, err := l.st.TryLock(ctx, l.name, clusterLockTTL)
		cancel()
		if ok {
			l.release = rel
			return
		}
		if err != nil && time.Since(warned) > 5*time.Second {
			l.log.Warn("waiting for the cluster lock", "lock", l.name, "err", err)
			warned = time.Now()
		}
		time.Sleep(wait)
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// Unlock gives the lock back.
func (l *clusterLock) Unlock() {
	if l.release != nil {
		l.release()
		l.release = nil
	}
	l.mu.Unlock()
}
