package store

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// OpenHostLeaf is OpenHost for a host with a leaf node (RunLeaf): the
// buckets leaf mirrors are read from the mirrors (Get, watches, lists)
// and written on the control plane; the others are the control plane's.
// It returns even while the control plane is unreachable: its connection
// keeps trying, and each bucket is bound on the control plane at its
// first write (that write fails until then, as a write does in a cut).
func OpenHostLeaf(ctx context.Context, url string, auth Auth, name string, leaf *Leaf) (*Store, error) {
	s := &Store{reconnected: make(chan struct{})}
	nc, err := s.connect(url, auth, name, nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s.nc, s.js = nc, js
	// The leaf restarted (its link came back): every watch, of the
	// mirrors too, starts over.
	leaf.setOnReset(s.signalReconnect)
	for _, b := range []struct {
		kv   *jetstream.KeyValue
		name string
	}{
		{&s.Apps, BucketApps}, {&s.Machines, BucketMachines}, {&s.Status, BucketStatus},
		{&s.Hosts, BucketHosts}, {&s.EdgeTLS, BucketEdgeTLS}, {&s.Challenges, BucketChallenges},
		{&s.Locks, BucketLocks}, {&s.Volumes, BucketVolumes}, {&s.IPs, BucketIPs}, {&s.Tickets, BucketTickets},
	} {
		hub := &hubKV{js: js, bucket: b.name}
		if local := leaf.KV(b.name); local != nil {
			*b.kv = &mirrorKV{hubKV: hub, local: local}
		} else {
			*b.kv = hub
		}
	}
	// Snapshots between hosts (volumes.go) move only at the control
	// plane's request: bound now if it answers, else once it does.
	if nc.IsConnected() {
		bctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if obj, err := js.ObjectStore(bctx, ObjectVolumeMoves); err == nil {
			s.moves.Store(&obj)
		}
	}
	s.movesJS = js
	return s, nil
}

// hubKV is a bucket of the control plane bound at its first use.
type hubKV struct {
	js     jetstream.JetStream
	bucket string

	mu sync.Mutex
	kv jetstream.KeyValue
}

var _ jetstream.KeyValue = (*hubKV)(nil)

func (h *hubKV) bind(ctx context.Context) (jetstream.KeyValue, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.kv != nil {
		return h.kv, nil
	}
	kv, err := h.js.KeyValue(ctx, h.bucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s on the control plane: %w", h.bucket, err)
	}
	h.kv = kv
	return kv, nil
}

func (h *hubKV) Bucket() string { return h.bucket }

func (h *hubKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.Get(ctx, key)
}

func (h *hubKV) GetRevision(ctx context.Context, key string, revision uint64) (jetstream.KeyValueEntry, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.GetRevision(ctx, key, revision)
}

func (h *hubKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return 0, err
	}
	return kv.Put(ctx, key, value)
}

func (h *hubKV) PutString(ctx context.Context, key string, value string) (uint64, error) {
	return h.Put(ctx, key, []byte(value))
}

func (h *hubKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return 0, err
	}
	return kv.Create(ctx, key, value, opts...)
}

func (h *hubKV) Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return 0, err
	}
	return kv.Update(ctx, key, value, revision)
}

func (h *hubKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	kv, err := h.bind(ctx)
	if err != nil {
		return err
	}
	return kv.Delete(ctx, key, opts...)
}

func (h *hubKV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	kv, err := h.bind(ctx)
	if err != nil {
		return err
	}
	return kv.Purge(ctx, key, opts...)
}

func (h *hubKV) Watch(ctx context.Context, keys string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.Watch(ctx, keys, opts...)
}

func (h *hubKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.WatchAll(ctx, opts...)
}

func (h *hubKV) WatchFiltered(ctx context.Context, keys []string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.WatchFiltered(ctx, keys, opts...)
}

func (h *hubKV) Keys(ctx context.Context, opts ...jetstream.WatchOpt) ([]string, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.Keys(ctx, opts...)
}

func (h *hubKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.ListKeys(ctx, opts...)
}

func (h *hubKV) ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.ListKeysFiltered(ctx, filters...)
}

func (h *hubKV) History(ctx context.Context, key string, opts ...jetstream.WatchOpt) ([]jetstream.KeyValueEntry, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.History(ctx, key, opts...)
}

func (h *hubKV) PurgeDeletes(ctx context.Context, opts ...jetstream.KVPurgeOpt) error {
	kv, err := h.bind(ctx)
	if err != nil {
		return err
	}
	return kv.PurgeDeletes(ctx, opts...)
}

func (h *hubKV) Status(ctx context.Context) (jetstream.KeyValueStatus, error) {
	kv, err := h.bind(ctx)
	if err != nil {
		return nil, err
	}
	return kv.Status(ctx)
}

// mirrorKV reads a bucket from the host's leaf node's mirror and writes
// it on the control plane. A mirror keeps the origin's revisions, so a
// compare-and-set (Update) with a revision read from the mirror is
// checked against the control plane's bucket.
type mirrorKV struct {
	*hubKV
	local jetstream.KeyValue
}

func (m *mirrorKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return m.local.Get(ctx, key)
}

func (m *mirrorKV) GetRevision(ctx context.Context, key string, revision uint64) (jetstream.KeyValueEntry, error) {
	return m.local.GetRevision(ctx, key, revision)
}

func (m *mirrorKV) Watch(ctx context.Context, keys string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return m.local.Watch(ctx, keys, opts...)
}

func (m *mirrorKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return m.local.WatchAll(ctx, opts...)
}

func (m *mirrorKV) WatchFiltered(ctx context.Context, keys []string, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	return m.local.WatchFiltered(ctx, keys, opts...)
}

func (m *mirrorKV) Keys(ctx context.Context, opts ...jetstream.WatchOpt) ([]string, error) {
	return m.local.Keys(ctx, opts...)
}

func (m *mirrorKV) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	return m.local.ListKeys(ctx, opts...)
}

func (m *mirrorKV) ListKeysFiltered(ctx context.Context, filters ...string) (jetstream.KeyLister, error) {
	return m.local.ListKeysFiltered(ctx, filters...)
}

func (m *mirrorKV) History(ctx context.Context, key string, opts ...jetstream.WatchOpt) ([]jetstream.KeyValueEntry, error) {
	return m.local.History(ctx, key, opts...)
}

func (m *mirrorKV) Status(ctx context.Context) (jetstream.KeyValueStatus, error) {
	return m.local.Status(ctx)
}

// Moves is the object store carrying snapshots between hosts
// (ObjectVolumeMoves): VolumeMoves, or for a host that started cut off
// from the control plane (OpenHostLeaf), bound at the first call that
// finds the control plane; nil until then.
func (s *Store) Moves(ctx context.Context) jetstream.ObjectStore {
	if s.VolumeMoves != nil {
		return s.VolumeMoves
	}
	if p := s.moves.Load(); p != nil {
		return *p
	}
	if s.movesJS == nil {
		return nil
	}
	obj, err := s.movesJS.ObjectStore(ctx, ObjectVolumeMoves)
	if err != nil {
		return nil
	}
	s.moves.Store(&obj)
	return obj
}
