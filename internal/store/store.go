// Package store keeps Perch's state in NATS JetStream key-value buckets and
// carries machine logs on a JetStream stream. It can run nats-server embedded
// in-process (data on disk) or connect to an external NATS; both take the same
// code path after the connection. The control plane, agents and edges import
// it; the request path of the edge never calls it, it only consumes watches.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names.
const (
	BucketApps     = "perch_apps"
	BucketMachines = "perch_machines"
	BucketStatus   = "perch_machine_status"
	BucketHosts    = "perch_hosts"
	BucketTokens   = "perch_tokens"
	// BucketReleases holds every app's releases, key "<app>.<version>".
	BucketReleases = "perch_releases"
	// Certificates (package certs): the records users see, certmagic's
	// storage (certificates, keys, ACME accounts), its locks, and the
	// ACME challenges the edges answer.
	BucketCerts      = "perch_certs"
	BucketTLS        = "perch_tls"
	BucketLocks      = "perch_locks"
	BucketChallenges = "perch_acme_challenges"
	// BucketAutoscale holds each app's autoscaling settings and the
	// autoscaler's last decisions, key "<app>".
	BucketAutoscale = "perch_autoscale"
	// BucketSecrets holds each app's secrets, encrypted (AppSecrets), key
	// "<app>".
	BucketSecrets = "perch_secrets"
	// BucketHostAuth holds join tokens ("join.<sha256>") and host
	// credentials ("host.<id>"), hashes only; the control plane's alone.
	BucketHostAuth = "perch_host_auth"
	// BucketEdgeTLS is the edges' copy of the certificates and their keys
	// (package certs writes it beside perch_tls): what hosts may read,
	// without the dev CA's or the ACME accounts' keys.
	BucketEdgeTLS = "perch_edge_tls"
	// BucketIPs holds the anycast addresses allocated to apps (package
	// anycast), key "ip.<32 hex digits of the address>".
	BucketIPs = "perch_ips"
	// BucketTickets holds each region's TLS session ticket keys, key
	// "<region>" (edge/tickets.go): a host reads and rotates only its own
	// region's (HostPermissions).
	BucketTickets = "perch_tls_tickets"
	StreamLogs    = "PERCH_LOGS"
	// ObjectRegistry holds the registry's blobs, named by digest
	// ("sha256:<hex>"), and StreamRegistry its manifest writes in order
	// on SubjectRegistry (package registry): every server serves every
	// image.
	ObjectRegistry  = "perch_registry"
	StreamRegistry  = "PERCH_REGISTRY"
	SubjectRegistry = "perch.registry.manifests"
)

// BucketOrgs holds organisations ("org.<slug>": members) and the
// registry's repository owners ("repo.<hex of the name>").
const BucketOrgs = "perch_orgs"

// ErrNotFound is returned when a key does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when creating a key that already exists.
var ErrExists = errors.New("already exists")

// Store is a connection to the state buckets.
type Store struct {
	nc *nats.Conn
	js jetstream.JetStream

	reMu        sync.Mutex
	reconnected chan struct{}

	opts Options

	Apps     jetstream.KeyValue
	Machines jetstream.KeyValue
	Status   jetstream.KeyValue
	Hosts    jetstream.KeyValue
	Tokens   jetstream.KeyValue
	Releases jetstream.KeyValue

	Certs      jetstream.KeyValue
	TLS        jetstream.KeyValue
	Locks      jetstream.KeyValue
	Challenges jetstream.KeyValue
	Autoscale  jetstream.KeyValue
	Secrets    jetstream.KeyValue
	Orgs       jetstream.KeyValue
	Volumes    jetstream.KeyValue
	// VolumeMoves carries snapshots between hosts (ObjectVolumeMoves);
	// a host reads it through Moves.
	VolumeMoves jetstream.ObjectStore
	moves       atomic.Pointer[jetstream.ObjectStore] // OpenHostLeaf's, once bound (Moves)
	movesJS     jetstream.JetStream
	HostAuth    jetstream.KeyValue
	EdgeTLS     jetstream.KeyValue
	IPs         jetstream.KeyValue
	Tickets     jetstream.KeyValue // TLS session ticket keys per region

	// Registry holds the registry's blobs (ObjectRegistry).
	Registry jetstream.ObjectStore
}

// Auth is how a connection to NATS authenticates: a token, or a user and
// password. InboxPrefix, if set, replaces "_INBOX" (a host may subscribe
// only to its own inboxes: HostInboxPrefix).
type Auth struct {
	Token, User, Password string
	InboxPrefix           string
	// OnError, if set, hears the connection's asynchronous errors, such
	// as the server refusing a subject the user may not use.
	OnError func(error)
}

// Open connects to NATS at url (with an optional auth token, which is also
// the password of an embedded server's ServerUser) and makes sure every
// bucket and stream exists.
func Open(ctx context.Context, url, token, name string) (*Store, error) {
	return OpenAs(ctx, url, Auth{Token: token}, name)
}

// OpenAs is Open with any Auth: the control plane's connection, which
// creates every bucket and stream.
func OpenAs(ctx context.Context, url string, auth Auth, name string) (*Store, error) {
	return OpenWith(ctx, url, auth, name, Options{})
}

// Options are a control plane's choices for the buckets and streams it
// makes and the leases it holds.
type Options struct {
	// Replicas is how many servers keep each bucket and stream (1 if
	// 0): a cluster's Cluster.Replicas.
	Replicas int
	// Holder names this process in the leases it holds (RunHeld), so
	// that `LeaseHolders` tells which server runs which job.
	Holder string
	// Follower leaves making the buckets and streams to another server
	// of the cluster (the first of --cluster-peers) and waits for them:
	// the same stream created at once from several servers leaves the
	// creators without an answer (seen with nats-server 2.15).
	Follower bool
}

// OpenWith is OpenAs with Options. With more than one replica it waits
// for the cluster's JetStream to be up (a quorum of servers) until ctx
// ends.
func OpenWith(ctx context.Context, url string, auth Auth, name string, o Options) (*Store, error) {
	s := &Store{reconnected: make(chan struct{}), opts: o}
	nc, err := s.connect(url, auth, name)
	if err != nil {
		return nil, err
	}
	if err := s.open(ctx, nc); err != nil {
		nc.Close()
		return nil, err
	}
	return s, nil
}

// OpenHost connects as a host: it creates nothing and binds only
// HostBuckets and perch_locks (the buckets its NATS user may use); the
// other fields stay nil.
func OpenHost(ctx context.Context, url string, auth Auth, name string) (*Store, error) {
	s := &Store{reconnected: make(chan struct{})}
	nc, err := s.connect(url, auth, name)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s.nc, s.js = nc, js
	for _, b := range []struct {
		kv   *jetstream.KeyValue
		name string
	}{
		{&s.Apps, BucketApps}, {&s.Machines, BucketMachines}, {&s.Status, BucketStatus},
		{&s.Hosts, BucketHosts}, {&s.EdgeTLS, BucketEdgeTLS}, {&s.Challenges, BucketChallenges},
		{&s.Locks, BucketLocks}, {&s.Volumes, BucketVolumes}, {&s.IPs, BucketIPs},
	} {
		kv, err := js.KeyValue(ctx, b.name)
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("bucket %s: %w", b.name, err)
		}
		*b.kv = kv
		listable(nc, kv)
	}
	// Session ticket keys: optional, so that a host newer than its
	// control plane still starts (its edge then keeps a key of its own).
	if kv, err := js.KeyValue(ctx, BucketTickets); err == nil {
		s.Tickets = kv
	}
	if s.VolumeMoves, err = js.ObjectStore(ctx, ObjectVolumeMoves); err != nil {
		nc.Close()
		return nil, fmt.Errorf("object store %s: %w", ObjectVolumeMoves, err)
	}
	return s, nil
}

func (s *Store) connect(url string, auth Auth, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(200 * time.Millisecond),
		// A host cut off from the network finds out within ~15 s and
		// reconnects as soon as the link is back, instead of waiting for
		// TCP to give up on a stalled connection (default: 2 min pings).
		nats.PingInterval(5 * time.Second), nats.MaxPingsOutstanding(2),
		nats.ReconnectHandler(func(*nats.Conn) { s.signalReconnect() }),
	}
	if auth.Token != "" {
		opts = append(opts, nats.Token(auth.Token))
		if auth.User == "" {
			// One secret for either server: an external NATS's token, or
			// the password of the embedded server's own user.
			auth.User, auth.Password = ServerUser, auth.Token
		}
	}
	if auth.User != "" {
		opts = append(opts, nats.UserInfo(auth.User, auth.Password))
	}
	if auth.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(auth.InboxPrefix))
	}
	if auth.OnError != nil {
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { auth.OnError(err) }))
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	return nc, nil
}

// Reconnected returns a channel closed at the next reconnection to NATS.
// Watches are ephemeral consumers that a restarted server no longer has:
// watchers re-watch when it fires instead of waiting for heartbeats to lapse.
func (s *Store) Reconnected() <-chan struct{} {
	s.reMu.Lock()
	defer s.reMu.Unlock()
	return s.reconnected
}

func (s *Store) signalReconnect() {
	s.reMu.Lock()
	defer s.reMu.Unlock()
	close(s.reconnected)
	s.reconnected = make(chan struct{})
}

func (s *Store) open(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	s.nc, s.js = nc, js
	for _, b := range []struct {
		kv   *jetstream.KeyValue
		name string
		hist uint8
		ttl  time.Duration // 0: keys live until deleted
	}{
		{&s.Apps, BucketApps, 1, 0},
		{&s.Machines, BucketMachines, 1, 0},
		{&s.Status, BucketStatus, 1, 0},
		{&s.Hosts, BucketHosts, 1, 0},
		{&s.Tokens, BucketTokens, 1, 0},
		{&s.Releases, BucketReleases, 1, 0},
		{&s.Certs, BucketCerts, 1, 0},
		{&s.TLS, BucketTLS, 1, 0},
		{&s.Locks, BucketLocks, 1, 0},
		{&s.Autoscale, BucketAutoscale, 1, 0},
		{&s.Secrets, BucketSecrets, 1, 0},
		{&s.Orgs, BucketOrgs, 1, 0},
		{&s.Volumes, BucketVolumes, 1, 0},
		{&s.HostAuth, BucketHostAuth, 1, 0},
		{&s.EdgeTLS, BucketEdgeTLS, 1, 0},
		{&s.IPs, BucketIPs, 1, 0},
		{&s.Tickets, BucketTickets, 1, 0},
		// A challenge lives minutes; the TTL sweeps those a crashed
		// issuer never cleaned up.
		{&s.Challenges, BucketChallenges, 1, time.Hour},
	} {
		kv, err := s.EnsureBucket(ctx, jetstream.KeyValueConfig{
			Bucket:  b.name,
			History: b.hist,
			TTL:     b.ttl,
			Storage: jetstream.FileStorage,
		})
		if err != nil {
			return err
		}
		*b.kv = kv
	}
	err = retryClustered(ctx, s.Replicas(), func(ctx context.Context) (err error) {
		if s.opts.Follower {
			s.VolumeMoves, err = js.ObjectStore(ctx, ObjectVolumeMoves)
			return err
		}
		s.VolumeMoves, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: ObjectVolumeMoves, Storage: jetstream.FileStorage, TTL: time.Hour, Replicas: s.Replicas(),
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("object store %s: %w", ObjectVolumeMoves, err)
	}
	err = retryClustered(ctx, s.Replicas(), func(ctx context.Context) (err error) {
		s.Registry, err = s.registryBlobs(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("object store %s: %w", ObjectRegistry, err)
	}
	if err := s.EnsureStream(ctx, jetstream.StreamConfig{
		Name: StreamRegistry, Subjects: []string{SubjectRegistry}, Storage: jetstream.FileStorage,
		Description: "registry manifest writes, replayed in order by every server",
	}); err != nil {
		return err
	}
	// Logs are a stream per app (logs.go), made with the app.
	if s.opts.Follower {
		return nil
	}
	if err := dropSharedLogStream(ctx, js); err != nil {
		return err
	}
	return nil
}

// registryBlobs makes (the first server) or binds ObjectRegistry: an
// object store whose stream answers reads from its leader only
// (AllowDirect off). nats.go makes object stores with direct gets, which
// any replica answers, and reads an object's info that way: a replica
// that lags (at R3 the one on the reading server, as often as not) then
// has no blob that was just pushed through another server
// (BLOB_UNKNOWN). The chunks come from a consumer, which the leader
// serves, so a read needs the leader anyway. The stream is the object
// store's own (ADR-20: subjects $O.<bucket>.C.> and $O.<bucket>.M.>),
// made in one step so that no server binds it while direct gets are on.
func (s *Store) registryBlobs(ctx context.Context) (jetstream.ObjectStore, error) {
	name := "OBJ_" + ObjectRegistry
	if s.opts.Follower {
		// Made by an earlier version, not yet changed by the first server?
		if err := s.leaderReadsMade(ctx, name); err != nil {
			return nil, err
		}
		return s.js.ObjectStore(ctx, ObjectRegistry)
	}
	_, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        name,
		Description: "registry blobs by digest",
		Subjects:    []string{"$O." + ObjectRegistry + ".C.>", "$O." + ObjectRegistry + ".M.>"},
		Storage:     jetstream.FileStorage,
		Replicas:    s.Replicas(),
		MaxBytes:    -1,
		Discard:     jetstream.DiscardNew,
		AllowRollup: true,
		AllowDirect: false,
	})
	if err != nil {
		return nil, err
	}
	return s.js.ObjectStore(ctx, ObjectRegistry)
}

// Replicas is how many servers keep each bucket and stream this store
// makes (Options.Replicas, at least 1).
func (s *Store) Replicas() int { return max(s.opts.Replicas, 1) }

// EnsureBucket makes (or updates) a bucket with the store's replicas
// and binds it.
func (s *Store) EnsureBucket(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = s.Replicas()
	var kv jetstream.KeyValue
	err := retryClustered(ctx, cfg.Replicas, func(ctx context.Context) error {
		var err error
		keyReads := keyReadBuckets[cfg.Bucket]
		if s.opts.Follower {
			// Bound with direct gets on, its reads could miss a write just
			// made: wait for the first server to turn them off, then bind
			// (nats.go reads the mode once, at bind time). Checked after
			// the bind, a turn between the two left a handle asking for
			// direct gets that no replica answers any more: "no
			// responders" for good (a restored cluster's follower, once).
			if cfg.Replicas > 1 && !keyReads {
				if err := s.leaderReadsMade(ctx, "KV_"+cfg.Bucket); err != nil {
					return err
				}
			}
			kv, err = s.js.KeyValue(ctx, cfg.Bucket)
			return err
		}
		if kv, err = s.js.CreateOrUpdateKeyValue(ctx, cfg); err != nil || cfg.Replicas == 1 || keyReads {
			return err
		}
		return s.leaderReads(ctx, "KV_"+cfg.Bucket, func() error {
			kv, err = s.js.KeyValue(ctx, cfg.Bucket)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	listable(s.nc, kv)
	return kv, nil
}

// keyReadBuckets keep direct gets in a cluster: hosts read single keys
// of them (their region's ticket keys, its autostop locks), and only a
// direct get names the key in its subject, where a host's permissions
// can allow that key and no other (hostperms.go). Their writers are the
// hosts themselves (tickets) or compare-and-set (locks), which a stale
// read only makes retry.
var keyReadBuckets = map[string]bool{BucketTickets: true, BucketLocks: true}

// leaderReads turns direct gets off on a replicated bucket's stream, then
// calls bind (which binds the bucket again: nats.go decides at bind time
// how a handle reads). nats.go makes every bucket with direct gets on,
// which any replica answers: a replica that lags behind the write's
// quorum (at R3 the reading server's own, as often as not) answers a
// key just written through another server, or through this one, as
// missing or old (the same race as the registry's blobs, see
// registryBlobs). Read from the leader, a Get sees every acknowledged
// write. A single server keeps direct gets (no replica can lag).
func (s *Store) leaderReads(ctx context.Context, stream string, bind func() error) error {
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	cfg := st.CachedInfo().Config
	if cfg.AllowDirect {
		cfg.AllowDirect = false
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("reads of %s from its leader only: %w", stream, err)
		}
	}
	return bind()
}

// leaderReadsMade is a follower's check that the first server has turned
// direct gets off on stream (leaderReads): an error to retry until then.
func (s *Store) leaderReadsMade(ctx context.Context, stream string) error {
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	if st.CachedInfo().Config.AllowDirect {
		return fmt.Errorf("stream %s still answers reads from any replica; waiting for the first server to change it", stream)
	}
	return nil
}

// EnsureStream makes (or updates) a stream with the store's replicas;
// a Follower waits for the first server to make it, as for buckets:
// servers that create the same stream at once are left without an
// answer, to the create and to the stream's info for seconds after
// (nats-server 2.15), which held a follower's start for good.
func (s *Store) EnsureStream(ctx context.Context, cfg jetstream.StreamConfig) error {
	return s.ensureStream(ctx, cfg, false)
}

// ensureStream is EnsureStream; with create, a Follower makes the
// stream too if it is missing (a stream made on demand, not at start).
func (s *Store) ensureStream(ctx context.Context, cfg jetstream.StreamConfig, create bool) error {
	cfg.Replicas = s.Replicas()
	err := retryClustered(ctx, cfg.Replicas, func(ctx context.Context) error {
		if s.opts.Follower {
			_, err := s.js.Stream(ctx, cfg.Name)
			if err == nil || !create {
				return err
			}
		}
		_, err := s.js.CreateOrUpdateStream(ctx, cfg)
		return err
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	return nil
}

// retryClustered runs fn until it succeeds; in a cluster (replicas > 1)
// failures are retried while ctx lasts, up to two minutes: JetStream
// answers only once a quorum of servers is up and has a meta leader.
func retryClustered(ctx context.Context, replicas int, fn func(context.Context) error) error {
	if replicas <= 1 {
		return fn(ctx)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for {
		// Each try bounded: a request to a stream whose leader is
		// being elected may otherwise wait for ever.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(actx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil {
			last = err
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%w (is a majority of the cluster's servers up?)", errors.Join(err, last))
		}
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// Conn is the underlying NATS connection.
func (s *Store) Conn() *nats.Conn { return s.nc }

// JetStream is the underlying JetStream context.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

// Close closes the connection.
func (s *Store) Close() { s.nc.Close() }

// Get reads key from kv into v.
func Get[T any](ctx context.Context, kv jetstream.KeyValue, key string) (T, uint64, error) {
	var v T
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return v, 0, fmt.Errorf("%s %q: %w", kv.Bucket(), key, ErrNotFound)
	}
	if err != nil {
		return v, 0, fmt.Errorf("get %s %q: %w", kv.Bucket(), key, err)
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return v, 0, fmt.Errorf("decode %s %q: %w", kv.Bucket(), key, err)
	}
	return v, e.Revision(), nil
}

// Put writes v under key.
func Put(ctx context.Context, kv jetstream.KeyValue, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s %q: %w", kv.Bucket(), key, err)
	}
	rev, err := kv.Put(ctx, key, b)
	if err != nil {
		return 0, fmt.Errorf("put %s %q: %w", kv.Bucket(), key, err)
	}
	return rev, nil
}

// Create writes v under key only if key does not exist.
//
// ErrExists comes only once the existing value can be read: in a cluster
// the stream's leader refuses a create while a competing one is in its
// log but not yet applied, and a read at that moment says "not found"
// (37 of 963 lost races on one server, TestCreateLosesRacesReadably),
// which failed every caller that reads the winner's value next (a
// registry push denied "repo...: not found" in a three-server world).
func Create(ctx context.Context, kv jetstream.KeyValue, key string, v any) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s %q: %w", kv.Bucket(), key, err)
	}
	for attempt := 0; ; attempt++ {
		rev, err := kv.Create(ctx, key, b)
		if err == nil {
			return rev, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("create %s %q: %w", kv.Bucket(), key, err)
		}
		// Not readable within the wait: the competing write did not
		// commit after all, and the key is free to create again.
		if readable(ctx, kv, key) || attempt == 2 {
			return 0, fmt.Errorf("%s %q: %w", kv.Bucket(), key, ErrExists)
		}
	}
}

// readable waits up to a second for key to be read as present; any
// answer other than "not found" counts (the caller's read will see it).
func readable(ctx context.Context, kv jetstream.KeyValue, key string) bool {
	deadline := time.Now().Add(time.Second)
	for {
		_, err := kv.Get(ctx, key)
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Modify reads key, applies fn and writes it back if nobody wrote in
// between, retrying on conflicts.
func Modify[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(*T) error) (T, error) {
	for attempt := 0; ; attempt++ {
		v, rev, err := Get[T](ctx, kv, key)
		if err != nil {
			return v, err
		}
		if err := fn(&v); err != nil {
			return v, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return v, fmt.Errorf("encode %s %q: %w", kv.Bucket(), key, err)
		}
		_, err = kv.Update(ctx, key, b, rev)
		if err == nil {
			return v, nil
		}
		if attempt >= modifyAttempts || !IsConflict(err) {
			return v, fmt.Errorf("update %s %q: %w", kv.Bucket(), key, err)
		}
		// Another writer won: wait a random moment, longer each time, so
		// racing writers take turns, and so that the winning write, which
		// a cluster's leader may not have applied yet, is there to read.
		select {
		case <-ctx.Done():
			return v, fmt.Errorf("update %s %q: %w", kv.Bucket(), key, ctx.Err())
		case <-time.After(time.Duration(rand.Int64N(int64(min(attempt+1, 10)) * int64(2*time.Millisecond)))):
		}
	}
}

// modifyAttempts bounds Modify's tries of one key under contention (with
// its backoff, about two seconds of losing).
const modifyAttempts = 50

// IsConflict says whether err is a compare-and-set write that lost: the
// key exists, or its revision moved. A single server answers 10071, a
// replicated stream 10164 (nats-server 2.15), which Modify took for a
// hard error: in a cluster, two writers of one key failed instead of
// taking turns (TestCreateLosesRacesReadably's increments).
func IsConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			// A replicated stream's code for the same conflict, and for a
			// write to a key another is still committing.
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// Delete removes key.
func Delete(ctx context.Context, kv jetstream.KeyValue, key string) error {
	if err := kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete %s %q: %w", kv.Bucket(), key, err)
	}
	return nil
}

// List returns every value whose key matches the filter (NATS subject
// wildcards; ">" for all).
func List[T any](ctx context.Context, kv jetstream.KeyValue, filter string) ([]T, error) {
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	defer w.Stop()
	var order []string
	latest := map[string][]byte{}
	add := func(key string, value []byte) {
		if _, had := latest[key]; !had {
			order = append(order, key)
		}
		latest[key] = value
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		add(e.Key(), e.Value())
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("list %s: %w", kv.Bucket(), ctx.Err())
	}
	// The watcher's end-of-values marker can come early while others write
	// the bucket (its per-message pending count may reach 0 and rise
	// again: nats-io/nats.py#995, nats-server#4824), and a key whose value
	// was replaced during the replay is skipped. The stream's list of the
	// filter's keys (one request, buckets the control plane opened) tells
	// which are missing; each is read. Most lists miss none.
	keys, err := listKeys(ctx, kv, filter)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	for _, k := range keys {
		if _, ok := latest[k]; ok {
			continue
		}
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", kv.Bucket(), err)
		}
		add(k, e.Value())
	}
	out := make([]T, 0, len(order))
	for _, k := range order {
		var v T
		if err := json.Unmarshal(latest[k], &v); err != nil {
			return nil, fmt.Errorf("decode %s %q: %w", kv.Bucket(), k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// listConns holds the connection of each bucket the control plane's store
// opened, for List's check against the stream's own list of keys. Hosts'
// stores register none: their NATS users may not ask for a stream's info.
var listConns sync.Map // jetstream.KeyValue -> *nats.Conn

func listable(nc *nats.Conn, kv jetstream.KeyValue) { listConns.Store(kv, nc) }

// listKeys are the keys matching filter that kv's stream holds (deleted
// ones too: their markers are messages), sorted; nil when kv was not
// registered.
func listKeys(ctx context.Context, kv jetstream.KeyValue, filter string) ([]string, error) {
	v, ok := listConns.Load(kv)
	if !ok {
		return nil, nil
	}
	prefix := "$KV." + kv.Bucket() + "."
	req, _ := json.Marshal(map[string]string{"subjects_filter": prefix + filter})
	msg, err := v.(*nats.Conn).RequestWithContext(ctx, "$JS.API.STREAM.INFO.KV_"+kv.Bucket(), req)
	if err != nil {
		return nil, fmt.Errorf("stream info: %w", err)
	}
	var info struct {
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &info); err != nil {
		return nil, fmt.Errorf("stream info: %w", err)
	}
	if info.Error != nil {
		return nil, fmt.Errorf("stream info: %s", info.Error.Description)
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subj, prefix))
	}
	slices.Sort(keys)
	return keys, nil
}
