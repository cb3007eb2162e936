package certs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/store"
)

// A lock is a key in the locks bucket, created only if absent (so one
// holder at a time) and rewritten by its holder every lockTTL/3. A lock not
// rewritten for lockTTL belongs to a holder that died: a waiter takes it
// over with a compare-and-set on its revision, so two waiters never both
// win. Times are the NATS server's (the entry's Created) compared with the
// local clock: hosts need roughly synchronised clocks, as for any TTL lock.

// lockPoll is how often a waiter looks at a held lock again.
const lockPoll = 200 * time.Millisecond

type heldLock struct {
	key  string
	stop chan struct{}
	done chan struct{}

	mu  sync.Mutex // guards rev; held across the rewrite
	rev uint64
}

// Lock takes the named lock, waiting while another holder has it.
func (s *Storage) Lock(ctx context.Context, name string) error {
	key := kvKey(name)
	for {
		rev, err := s.locks.Create(ctx, key, []byte(s.owner))
		if err == nil {
			s.hold(name, key, rev)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("certs: lock %s: %w", name, err)
		}
		e, err := s.locks.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			continue // released meanwhile
		case err != nil:
			return fmt.Errorf("certs: lock %s: %w", name, err)
		case time.Since(e.Created()) > s.lockTTL:
			rev, err := s.locks.Update(ctx, key, []byte(s.owner), e.Revision())
			if err == nil {
				s.log.Warn("took over a lock whose holder stopped refreshing it", "lock", name, "holder", string(e.Value()), "age", time.Since(e.Created()).Round(time.Second))
				s.hold(name, key, rev)
				return nil
			}
			continue // another waiter won, or the holder refreshed it
		}
		t := time.NewTimer(lockPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("certs: lock %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// hold records a taken lock and keeps it fresh until Unlock.
func (s *Storage) hold(name, key string, rev uint64) {
	h := &heldLock{key: key, rev: rev, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.held[name] = h
	s.mu.Unlock()
	go s.refresh(name, h)
}

func (s *Storage) refresh(name string, h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(s.lockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		if err := s.touch(name, h); err != nil {
			s.log.Warn("cannot refresh lock; another holder may take it over", "lock", name, "err", err)
		}
	}
}

// touch rewrites a held lock, which restarts its TTL.
func (s *Storage) touch(name string, h *heldLock) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.lockTTL/3)
	defer cancel()
	h.mu.Lock()
	defer h.mu.Unlock()
	rev, err := s.locks.Update(ctx, h.key, []byte(s.owner), h.rev)
	if err != nil {
		return fmt.Errorf("certs: refresh lock %s: %w", name, err)
	}
	h.rev = rev
	return nil
}

// RenewLockLease refreshes a held lock now; certmagic calls it between
// attempts of a long operation.
func (s *Storage) RenewLockLease(ctx context.Context, name string, _ time.Duration) error {
	s.mu.Lock()
	h := s.held[name]
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certs: lock %s is not held", name)
	}
	return s.touch(name, h)
}

// Unlock releases a lock taken with Lock. A lock that another holder took
// over meanwhile is left to it.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certs: unlock %s: not held", name)
	}
	close(h.stop)
	<-h.done
	h.mu.Lock()
	rev := h.rev
	h.mu.Unlock()
	err := s.locks.Delete(ctx, h.key, jetstream.LastRevision(rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		if store.IsConflict(err) {
			s.log.Warn("lock was taken over before it was released", "lock", name)
			return nil
		}
		return fmt.Errorf("certs: unlock %s: %w", name, err)
	}
	return nil
}
