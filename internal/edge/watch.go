package edge

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The buckets the route table is made of.
const (
	bucketApps = iota
	bucketMachines
	bucketStatus
	bucketHosts
	nBuckets
)

// change is one update of a bucket: a key put or deleted, or (all != nil)
// the whole bucket as a new watch first read it.
type change struct {
	bucket  int
	key     string
	value   []byte
	deleted bool
	all     map[string][]byte
}

// watch feeds the table from the store until ctx is done. Each bucket has
// its own watch; changes meet in one goroutine, which applies whatever has
// arrived and then commits once, so a burst of changes costs one rebuild.
func (e *Edge) watch(ctx context.Context) {
	s := e.cfg.Store
	kvs := [nBuckets]jetstream.KeyValue{s.Apps, s.Machines, s.Status, s.Hosts}
	ch := make(chan change, 256)
	var wg sync.WaitGroup
	for b, kv := range kvs {
		wg.Go(func() { e.watchBucket(ctx, b, kv, ch) })
	}
	defer wg.Wait()

	var loaded [nBuckets]bool
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-ch:
			e.apply(c, &loaded)
		}
	drain:
		for {
			select {
			case c := <-ch:
				e.apply(c, &loaded)
			default:
				break drain
			}
		}
		// Until every bucket is read, a snapshot would route on half the
		// facts (machines without their hosts look down).
		if loaded == [nBuckets]bool{true, true, true, true} {
			e.table.commit()
		}
	}
}

// watchBucket sends the changes of one bucket to ch, starting with its
// whole content, and watches again if the watch ends before ctx does.
func (e *Edge) watchBucket(ctx context.Context, bucket int, kv jetstream.KeyValue, ch chan<- change) {
	send := func(c change) bool {
		select {
		case ch <- c:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for ctx.Err() == nil {
		// After a reconnection the server may have lost this watch (a
		// restarted NATS keeps no ephemeral consumer): watch again at once
		// instead of waiting for missed heartbeats.
		var reconnected <-chan struct{}
		if e.cfg.Store != nil {
			reconnected = e.cfg.Store.Reconnected()
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			e.log.Warn("cannot watch bucket; retrying", "bucket", kv.Bucket(), "err", err)
			sleep(ctx, time.Second)
			continue
		}
		all := map[string][]byte{}
		initial := true
	read:
		for {
			select {
			case <-ctx.Done():
				break read
			case <-reconnected:
				e.log.Info("reconnected to NATS; watching again", "bucket", kv.Bucket())
				_ = w.Stop()
				w = nil
				break read
			case ent, ok := <-w.Updates():
				switch {
				case !ok:
					break read
				case ent == nil: // the initial values are all in
					initial = false
					if !send(change{bucket: bucket, all: all}) {
						break read
					}
				case initial && isDelete(ent):
					delete(all, ent.Key())
				case initial:
					all[ent.Key()] = ent.Value()
				default:
					if !send(change{bucket: bucket, key: ent.Key(), value: ent.Value(), deleted: isDelete(ent)}) {
						break read
					}
				}
			}
		}
		if w == nil {
			continue // re-watch right away after a reconnection
		}
		_ = w.Stop()
		if ctx.Err() == nil {
			e.log.Warn("bucket watch ended; watching again", "bucket", kv.Bucket())
			sleep(ctx, time.Second)
		}
	}
}

func isDelete(ent jetstream.KeyValueEntry) bool {
	op := ent.Operation()
	return op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge
}

// apply puts one change into the table.
func (e *Edge) apply(c change, loaded *[nBuckets]bool) {
	if c.all != nil {
		e.table.clear(c.bucket)
		for k, v := range c.all {
			e.applyOne(c.bucket, k, v, false)
		}
		loaded[c.bucket] = true
		return
	}
	e.applyOne(c.bucket, c.key, c.value, c.deleted)
}

func (e *Edge) applyOne(bucket int, key string, value []byte, deleted bool) {
	t := e.table
	switch bucket {
	case bucketApps:
		applyKey(e, "apps", key, value, deleted, t.setApp, t.removeApp)
	case bucketMachines:
		applyKey(e, "machines", key, value, deleted, t.setMachine, t.removeMachine)
	case bucketStatus:
		applyKey(e, "status", key, value, deleted, t.setStatus, t.removeStatus)
	case bucketHosts:
		applyKey(e, "hosts", key, value, deleted, t.setHost, t.removeHost)
	}
}

// applyKey decodes value as a T and sets it, or removes key. A record that
// does not decode is dropped: routing on a guess would be worse.
func applyKey[T any](e *Edge, what, key string, value []byte, deleted bool, set func(string, T), remove func(string)) {
	if deleted {
		remove(key)
		return
	}
	var v T
	if err := json.Unmarshal(value, &v); err != nil {
		e.log.Warn("ignoring record that does not decode", "bucket", what, "key", key, "err", err)
		remove(key)
		return
	}
	set(key, v)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
