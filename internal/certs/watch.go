package certs

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/store"
)

// kvChange is one update of a watched bucket: the whole content (all !=
// nil) when a watch has read it, then single keys put or deleted.
type kvChange struct {
	all     map[string][]byte
	key     string
	value   []byte
	deleted bool
}

// watchKV calls fn with kv's whole content, then with each change, until
// ctx is done. A watch that ends, or a reconnection to NATS (a restarted
// server keeps no ephemeral consumer), starts over with the whole content,
// so fn must treat all as replacing what it had. fn runs in this goroutine.
func watchKV(ctx context.Context, st *store.Store, kv jetstream.KeyValue, log *slog.Logger, fn func(kvChange)) {
	for ctx.Err() == nil {
		reconnected := st.Reconnected()
		w, err := kv.WatchAll(ctx)
		if err != nil {
			log.Warn("cannot watch bucket; retrying", "bucket", kv.Bucket(), "err", err)
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
				log.Info("reconnected to NATS; watching again", "bucket", kv.Bucket())
				break read
			case e, ok := <-w.Updates():
				switch {
				case !ok:
					log.Warn("bucket watch ended; watching again", "bucket", kv.Bucket())
					sleep(ctx, time.Second)
					break read
				case e == nil:
					initial = false
					fn(kvChange{all: all})
				case initial && isDelete(e):
					delete(all, e.Key())
				case initial:
					all[e.Key()] = e.Value()
				default:
					fn(kvChange{key: e.Key(), value: e.Value(), deleted: isDelete(e)})
				}
			}
		}
		_ = w.Stop()
	}
}

func isDelete(e jetstream.KeyValueEntry) bool {
	op := e.Operation()
	return op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
