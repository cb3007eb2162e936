package store

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Change is one update of a watched bucket: its whole content (All !=
// nil, possibly empty) when a watch has read it, then single keys put or
// deleted.
type Change struct {
	All     map[string][]byte
	Key     string
	Value   []byte
	Deleted bool
}

// watchRetry is how long Watch waits before watching again after a watch
// could not start or ended on its own.
var watchRetry = time.Second

// Watch calls fn with kv's whole content, then with each change, until ctx
// is done. A watch that ends, or a reconnection to NATS (a restarted
// server keeps no ephemeral consumer, so the watch is made again at once),
// starts over with the whole content: fn must treat All as replacing what
// it had, keys missing from it as deleted. fn runs in Watch's goroutine. s
// may be nil (a bucket not from a Store): then only a watch that ends
// starts over.
func (s *Store) Watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger, fn func(Change)) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	failing := "" // the last error of a watch that could not start, said once
	for ctx.Err() == nil {
		var reconnected <-chan struct{}
		if s != nil {
			reconnected = s.Reconnected()
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			if ctx.Err() == nil {
				// A host cut off from the control plane retries every
				// second for as long as the cut lasts: the same error is
				// said once, then only at debug level.
				level := slog.LevelWarn
				if err.Error() == failing {
					level = slog.LevelDebug
				}
				failing = err.Error()
				log.Log(ctx, level, "cannot watch bucket; retrying", "bucket", kv.Bucket(), "err", err)
				sleepCtx(ctx, watchRetry)
			}
			continue
		}
		if failing != "" {
			log.Info("watching bucket again", "bucket", kv.Bucket())
			failing = ""
		}
		again := readWatch(ctx, w, reconnected, fn)
		_ = w.Stop()
		switch {
		case ctx.Err() != nil:
		case again:
			log.Info("reconnected to NATS; watching again", "bucket", kv.Bucket())
		default:
			log.Warn("bucket watch ended; watching again", "bucket", kv.Bucket())
			sleepCtx(ctx, watchRetry)
		}
	}
}

// readWatch feeds fn from w until ctx is done (false), the watch ends
// (false) or NATS reconnected (true).
func readWatch(ctx context.Context, w jetstream.KeyWatcher, reconnected <-chan struct{}, fn func(Change)) bool {
	all := map[string][]byte{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return false
		case <-reconnected:
			return true
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return false
			case e == nil: // the initial values are all in, or seem to be
				initial = false
				if !settle(ctx, w, all) {
					return false
				}
				fn(Change{All: all})
				all = nil
			case initial && IsDelete(e):
				delete(all, e.Key())
			case initial:
				all[e.Key()] = e.Value()
			default:
				fn(Change{Key: e.Key(), Value: e.Value(), Deleted: IsDelete(e)})
			}
		}
	}
}

// settleQuiet and settleMax bound how long a watch reads on after its
// end-of-values marker before handing its first content over.
const (
	settleQuiet = 30 * time.Millisecond
	settleMax   = 250 * time.Millisecond
)

// settle adds to all the updates that come right after the watcher's
// end-of-values marker, until none comes for settleQuiet (at most
// settleMax). While others write the bucket the marker can come early (its
// pending count reaches 0 and rises again: nats-io/nats.py#995,
// nats-server#4824) and a key replaced during the replay is skipped, its
// new value delivered just after the marker. Taken as the whole bucket
// without it, such a first content lacks keys, which watchers take as
// deleted: an agent removed the worker of a running machine and destroyed
// it, an edge took a host for gone (TestWatchFirstContentWhole: 21 of 200
// first contents were short). It returns false if the watch ended.
func settle(ctx context.Context, w jetstream.KeyWatcher, all map[string][]byte) bool {
	end := time.NewTimer(settleMax)
	defer end.Stop()
	quiet := time.NewTimer(settleQuiet)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-end.C:
			return true
		case <-quiet.C:
			return true
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return false
			case e == nil:
			case IsDelete(e):
				delete(all, e.Key())
			default:
				all[e.Key()] = e.Value()
			}
			quiet.Reset(settleQuiet)
		}
	}
}

// IsDelete says whether a watched entry removes its key.
func IsDelete(e jetstream.KeyValueEntry) bool {
	op := e.Operation()
	return op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
