package edge

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/store"
)

// The buckets the route table is made of.
const (
	bucketApps = iota
	bucketMachines
	bucketStatus
	bucketHosts
	bucketIPs // anycast.go
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
	kvs := [nBuckets]jetstream.KeyValue{s.Apps, s.Machines, s.Status, s.Hosts, s.IPs}
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
		if loaded == [nBuckets]bool{true, true, true, true, true} {
			e.table.commit()
		}
	}
}

// watchBucket sends the changes of one bucket to ch, starting with its
// whole content, and watches again if the watch ends before ctx does.
func (e *Edge) watchBucket(ctx context.Context, bucket int, kv jetstream.KeyValue, ch chan<- change) {
	e.cfg.Store.Watch(ctx, kv, e.log, func(c store.Change) {
		select {
		case ch <- change{bucket: bucket, key: c.Key, value: c.Value, deleted: c.Deleted, all: c.All}:
		case <-ctx.Done():
		}
	})
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
	case bucketIPs:
		applyKey(e, "ips", key, value, deleted, t.setIP, t.removeIP)
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
