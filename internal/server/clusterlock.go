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

// LockCtx is Lock for a request: it gives up with the 503 of a lost
// quorum when the store fails to answer and this server's JetStream sees
// fewer than a majority of servers up (or the store has failed for
// lockGiveUp), and when ctx
// ends. A lock held by another, or a store failing while one server is
// down and a leader is elected, is waited for as by Lock.
func (l *clusterLock) LockCtx(ctx context.Context, s *Server) error {
	l.mu.Lock()
	if l.st == nil {
		return nil
	}
	wait := 5 * time.Millisecond
	var failing time.Time
	for {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rel, ok, err := l.st.TryLock(tctx, l.name, clusterLockTTL)
		cancel()
		if ok {
			l.release = rel
			return nil
		}
		switch {
		case err == nil:
			failing = time.Time{}
		case failing.IsZero():
			failing = time.Now()
		}
		switch {
		case ctx.Err() != nil:
			l.mu.Unlock()
			return ctx.Err()
		case err != nil && (s.quorumLost() || time.Since(failing) > lockGiveUp):
			l.mu.Unlock()
			return s.noQuorum(err)
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
