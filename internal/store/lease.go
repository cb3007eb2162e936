package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A lease is a key in perch_locks ("lease.<name>"), created only if absent
// and rewritten by its holder every ttl/3. One not rewritten for ttl
// belongs to a holder that died: a waiter takes it over with a
// compare-and-set on its revision, so two never both win. It is the same
// scheme as the certificate locks (package certs), for long-running
// singletons such as the autoscaler.

// RunHeld runs fn while this process holds the lease name, waiting (and
// retrying after losing it) until ctx is done. fn's context is cancelled
// when the lease is lost (a refresh fails) or ctx ends; RunHeld then
// releases the lease and, unless ctx is done, waits to hold it again.
func (s *Store) RunHeld(ctx context.Context, name string, ttl time.Duration, log *slog.Logger, fn func(ctx context.Context)) error {
	if ttl <= 0 {
		ttl = 15 * time.Second
	}
	b := make([]byte, 8)
	rand.Read(b)
	owner := hex.EncodeToString(b)
	if s.opts.Holder != "" {
		owner = s.opts.Holder + "/" + owner
	}
	key := "lease." + name
	for {
		rev, held, err := s.acquire(ctx, key, owner, ttl, log)
		if err != nil {
			return fmt.Errorf("lease %s: %w", name, err)
		}
		log.Info("holding lease", "lease", name)
		hctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); fn(hctx) }()
		t := time.NewTicker(ttl / 3)
		lastOK := time.Now()
	hold:
		for {
			select {
			case <-done:
				break hold
			case <-t.C:
				rctx, rcancel := context.WithTimeout(ctx, ttl/4)
				nrev, err := s.Locks.Update(rctx, key, []byte(held), rev)
				rcancel()
				if err == nil {
					rev, lastOK = nrev, time.Now()
					continue
				}
				// A failed write (a cluster electing a new stream
				// leader) is retried while nobody may take the lease
				// over yet; a conflict means another holder has it.
				if !IsConflict(err) && time.Since(lastOK) < ttl*2/3 {
					log.Warn("lease refresh failed; retrying", "lease", name, "err", err)
					continue
				}
				log.Warn("lost lease; another holder may take over", "lease", name, "err", err)
				break hold
			}
		}
		t.Stop()
		cancel()
		<-done
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), ttl/3)
		s.Locks.Delete(dctx, key, jetstream.LastRevision(rev)) // best effort; a taken-over lease is left to its holder
		dcancel()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// LeaseHolders returns every lease held now, by name ("autoscaler"), and
// its holder (Options.Holder of the store that took it, empty if none was
// given): the cluster test reads it.
func (s *Store) LeaseHolders(ctx context.Context) (map[string]string, error) {
	ls, err := s.Leases(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range ls {
		out[l.Name] = l.Holder
	}
	return out, nil
}

// Lease is a lease held now: `perch server status` shows them.
type Lease struct {
	Name   string // "autoscaler"
	Holder string // Options.Holder of the store holding it, or ""
	// Since is when the holder took it; Refreshed its last rewrite.
	Since, Refreshed time.Time
}

// Leases returns every lease held now, by name.
func (s *Store) Leases(ctx context.Context) ([]Lease, error) {
	keys, err := s.Locks.ListKeysFiltered(ctx, "lease.>")
	if err != nil {
		return nil, fmt.Errorf("leases: %w", err)
	}
	defer keys.Stop()
	var out []Lease
	for k := range keys.Keys() {
		e, err := s.Locks.Get(ctx, k)
		if err != nil {
			continue // released meanwhile
		}
		l := Lease{Name: strings.TrimPrefix(k, "lease."), Refreshed: e.Created()}
		// The value is "<holder>/<random>@<unix ms taken>", "<random>@..."
		// without a holder (no "@..." from an earlier version).
		v, since, ok := strings.Cut(string(e.Value()), "@")
		if ms, err := strconv.ParseInt(since, 10, 64); ok && err == nil {
			l.Since = time.UnixMilli(ms)
		}
		if h, _, ok := strings.Cut(v, "/"); ok {
			l.Holder = h
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// acquire waits until key is created by owner or taken over from a dead
// holder, returning its revision and the value written: owner and the
// time it took the lease.
func (s *Store) acquire(ctx context.Context, key, owner string, ttl time.Duration, log *slog.Logger) (uint64, string, error) {
	poll := min(ttl/10, time.Second)
	var warned time.Time
	for {
		held := owner + "@" + strconv.FormatInt(time.Now().UnixMilli(), 10)
		rev, err := s.Locks.Create(ctx, key, []byte(held))
		if err == nil {
			return rev, held, nil
		}
		var e jetstream.KeyValueEntry
		if errors.Is(err, jetstream.ErrKeyExists) {
			e, err = s.Locks.Get(ctx, key)
		}
		switch {
		case ctx.Err() != nil:
			return 0, "", ctx.Err()
		case errors.Is(err, jetstream.ErrKeyNotFound):
			continue
		case err != nil:
			// NATS away, or a cluster electing the bucket's leader:
			// wait and try again, as for a lease held by another.
			if time.Since(warned) > 10*time.Second {
				log.Warn("cannot take lease yet; retrying", "lease", strings.TrimPrefix(key, "lease."), "err", err)
				warned = time.Now()
			}
		case time.Since(e.Created()) > ttl:
			if rev, err := s.Locks.Update(ctx, key, []byte(held), e.Revision()); err == nil {
				return rev, held, nil
			}
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, "", ctx.Err()
		case <-t.C:
		}
	}
}

// TryLock takes the short lock name in perch_locks ("lock.<name>") if
// nobody holds it, or if its holder took it more than ttl ago (it died
// holding it: taken over with a compare-and-set, so two never both win).
// ok is false when another holds it; the caller tries again later. It is
// for decisions a few store calls long that two hosts must not take at
// once, such as autostop's count of a region's started machines; release
// gives it back.
func (s *Store) TryLock(ctx context.Context, name string, ttl time.Duration) (release func(), ok bool, err error) {
	key := "lock." + name
	b := make([]byte, 8)
	rand.Read(b)
	owner := []byte(hex.EncodeToString(b))
	rev, err := s.Locks.Create(ctx, key, owner)
	if errors.Is(err, jetstream.ErrKeyExists) {
		e, gerr := s.Locks.Get(ctx, key)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			return nil, false, nil // released meanwhile: the next try gets it
		case gerr != nil:
			return nil, false, fmt.Errorf("lock %s: %w", name, gerr)
		case time.Since(e.Created()) <= ttl:
			return nil, false, nil
		}
		rev, err = s.Locks.Update(ctx, key, owner, e.Revision())
		if err != nil {
			return nil, false, nil // another took it over first
		}
	} else if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		s.Locks.Delete(dctx, key, jetstream.LastRevision(rev))
	}, true, nil
}
