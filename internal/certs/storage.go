package certs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/store"
)

// Storage is certmagic's storage on NATS JetStream: values in the perch_tls
// bucket, locks in perch_locks. Every control plane sharing one NATS shares
// its certificates, ACME accounts and locks.
type Storage struct {
	kv    jetstream.KeyValue
	edge  jetstream.KeyValue // perch_edge_tls: the certificate files, edgetls.go
	locks jetstream.KeyValue
	log   *slog.Logger
	// owner identifies this Storage's locks.
	owner string
	// lockTTL is how long a lock whose holder stopped refreshing it (a
	// crashed process) blocks others.
	lockTTL time.Duration

	mu   sync.Mutex // guards held
	held map[string]*heldLock
}

var (
	_ certmagic.Storage          = (*Storage)(nil)
	_ certmagic.LockLeaseRenewer = (*Storage)(nil)
)

// NewStorage returns the storage on st's buckets; log receives lock
// take-overs and refresh failures.
func NewStorage(st *store.Store, log *slog.Logger) *Storage {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &Storage{
		kv: st.TLS, edge: st.EdgeTLS, locks: st.Locks, log: log,
		owner: hex.EncodeToString(b), lockTTL: 30 * time.Second,
		held: map[string]*heldLock{},
	}
}

// Store puts value at key.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if _, err := s.kv.Put(ctx, kvKey(key), value); err != nil {
		return fmt.Errorf("certs: store %s: %w", key, err)
	}
	return s.copyToEdge(ctx, kvKey(key), value)
}

// Load returns the value at key, or an error matching fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	e, err := s.kv.Get(ctx, kvKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("certs: load %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("certs: load %s: %w", key, err)
	}
	return e.Value(), nil
}

// Delete removes key and every key under it; a missing key is no error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	keys, err := s.keys(ctx)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k == key || strings.HasPrefix(k, key+"/") {
			if err := s.kv.Delete(ctx, kvKey(k)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("certs: delete %s: %w", k, err)
			}
			if err := s.copyToEdge(ctx, kvKey(k), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// Exists says whether key is a value or has values under it.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List returns the keys under dir: all of them when recursive, else the
// direct children (values and "directories").
func (s *Storage) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	keys, err := s.keys(ctx)
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	if dir == "" {
		prefix = ""
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok || rest == "" {
			continue
		}
		if !recursive {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				k = prefix + rest[:i]
			}
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("certs: list %s: %w", dir, fs.ErrNotExist)
	}
	return out, nil
}

// Stat describes key: a value, or a "directory" with values under it.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	e, err := s.kv.Get(ctx, kvKey(key))
	if err == nil {
		return certmagic.KeyInfo{Key: key, Modified: e.Created(), Size: int64(len(e.Value())), IsTerminal: true}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, err)
	}
	keys, err := s.keys(ctx)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	for _, k := range keys {
		if strings.HasPrefix(k, key+"/") {
			return certmagic.KeyInfo{Key: key}, nil
		}
	}
	return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, fs.ErrNotExist)
}

// keys lists every key in the bucket, decoded. The bucket holds a few
// keys per certificate, so listing it whole is cheap; it is never done on
// a request path.
func (s *Storage) keys(ctx context.Context) ([]string, error) {
	l, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("certs: list keys: %w", err)
	}
	defer l.Stop()
	var out []string
	for k := range l.Keys() {
		if d, ok := keyFromKV(k); ok {
			out = append(out, d)
		}
	}
	return out, nil
}

// kvKey maps a certmagic key (any string) to a valid KV key: letters,
// digits, '-', '_' and '/' stay, a '.' stays unless it would make an empty
// subject token, everything else becomes =XX.
func kvKey(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/'
		if c == '.' {
			ok = i > 0 && i < len(key)-1 && key[i-1] != '.' && key[i+1] != '.'
		}
		if ok {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

// keyFromKV reverses kvKey.
func keyFromKV(k string) (string, bool) {
	if !strings.Contains(k, "=") {
		return k, true
	}
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] != '=' {
			b.WriteByte(k[i])
			continue
		}
		if i+2 >= len(k) {
			return "", false
		}
		v, err := hex.DecodeString(k[i+1 : i+3])
		if err != nil {
			return "", false
		}
		b.Write(v)
		i += 2
	}
	return b.String(), true
}
