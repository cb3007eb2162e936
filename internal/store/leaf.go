package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HubDomain is the JetStream domain of the control plane's NATS once it
// accepts hosts' leaf nodes (EmbeddedOptions.LeafListen): a leaf's own
// JetStream has another (LeafDomain), and each reaches the other's API
// only through its domain's prefix.
const HubDomain = "perch"

// LeafDomain is the JetStream domain of host id's leaf node.
func LeafDomain(hostID string) string { return "leaf-" + hostID }

// LeafBuckets are the buckets a host's leaf node mirrors: what its edge,
// mesh and workers read to serve and run machines (routes by app, specs,
// statuses, hosts, certificates, anycast addresses, volume records).
// Every one is also in HostBuckets: a mirror holds nothing its host could
// not read already.
var LeafBuckets = []string{BucketApps, BucketMachines, BucketStatus, BucketHosts, BucketEdgeTLS, BucketIPs, BucketVolumes}

// LeafDeliverPrefix is the subject prefix under which the control plane's
// NATS delivers host id's mirrors: only that host's leaf connection may
// receive it (LeafPermissions).
func LeafDeliverPrefix(hostID string) string { return "perch.leaf." + hostID }

// LeafPermissions are the permissions of host id's leaf node connection
// (as the leaf sees them: what it may send to the control plane's NATS
// and receive from it): create and delete the consumers of its mirrors of
// LeafBuckets, answer their flow control, and receive their messages on
// its own deliver prefix. Nothing else crosses the leaf connection; the
// agent's writes and requests go over its client connection, with
// HostPermissions.
func LeafPermissions(hostID string) *server.Permissions {
	api := "$JS." + HubDomain + ".API."
	var pub []string
	for _, b := range LeafBuckets {
		s := "KV_" + b
		pub = append(pub,
			api+"STREAM.INFO."+s,
			api+"CONSUMER.CREATE."+s, api+"CONSUMER.CREATE."+s+".>",
			api+"CONSUMER.DELETE."+s+".>", api+"CONSUMER.INFO."+s+".>",
			"$JS.FC."+s+".>",
		)
	}
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{
			LeafDeliverPrefix(hostID) + ".>",
			// The answers to its consumer requests.
			"$JSC.R.>",
		}},
	}
}

// LeafConfig configures a host's leaf node.
type LeafConfig struct {
	// Dir holds its JetStream (the mirrors): they outlive the agent.
	Dir string
	// Remotes are the control plane's leaf node URLs (nats-leaf://host:port).
	Remotes []string
	// HostID and Password are the host's NATS user and its credential's
	// secret, the same as its client connection's.
	HostID, Password string
	// Buckets are the buckets to mirror: LeafBuckets if nil.
	Buckets []string
	Log     *slog.Logger
}

// Leaf is a host's own nats-server, a leaf node of the control plane's
// NATS with its own JetStream (domain LeafDomain), holding on disk a
// mirror of each of LeafBuckets. It listens on no port: the agent
// connects in process. Cut off from the control plane it keeps every
// mirror as it last was; once the link is back each catches up by itself
// (JetStream's mirror consumer), in order.
type Leaf struct {
	srv *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	kvs map[string]jetstream.KeyValue

	buckets []string
}

// RunLeaf starts host's leaf node and makes its mirrors (kept if they
// exist), returning once they are bound, whether or not the control
// plane is reachable.
func RunLeaf(ctx context.Context, cfg LeafConfig) (*Leaf, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	var urls []*url.URL
	for _, r := range cfg.Remotes {
		r = strings.TrimSpace(r)
		if r == "" {
			continue
		}
		u, err := url.Parse(r)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("leaf: control plane leaf node URL %q: want nats-leaf://host:port", r)
		}
		u.User = url.UserPassword(cfg.HostID, cfg.Password)
		urls = append(urls, u)
	}
	if len(urls) == 0 {
		return nil, errors.New("leaf: no control plane leaf node URL")
	}
	opts := &server.Options{
		ServerName:      "leaf-" + cfg.HostID,
		DontListen:      true,
		JetStream:       true,
		JetStreamDomain: LeafDomain(cfg.HostID),
		StoreDir:        cfg.Dir,
		NoSigs:          true,
		NoLog:           true,
		MaxPayload:      8 << 20,
		LeafNode: server.LeafNodeOpts{
			ReconnectInterval: time.Second,
			Remotes:           []*server.RemoteLeafOpts{{URLs: urls}},
		},
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("leaf: nats server: %w", err)
	}
	if os.Getenv("PERCH_NATS_DEBUG") != "" {
		opts.NoLog, opts.Debug = false, true
		srv.ConfigureLogger()
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("leaf: nats server did not become ready in 10s")
	}
	if cfg.Buckets == nil {
		cfg.Buckets = LeafBuckets
	}
	l := &Leaf{srv: srv, kvs: map[string]jetstream.KeyValue{}, buckets: cfg.Buckets}
	if err := l.open(ctx, cfg.HostID); err != nil {
		l.Shutdown()
		return nil, err
	}
	cfg.Log.Info("leaf node started", "dir", cfg.Dir, "domain", LeafDomain(cfg.HostID), "remotes", len(urls))
	return l, nil
}

func (l *Leaf) open(ctx context.Context, hostID string) error {
	nc, err := nats.Connect("", nats.InProcessServer(l.srv), nats.Name("perch-leaf-"+hostID), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("leaf: connect: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return fmt.Errorf("leaf: jetstream: %w", err)
	}
	l.nc, l.js = nc, js
	for _, b := range l.buckets {
		name := "KV_" + b
		cfg := jetstream.StreamConfig{
			Name: name,
			Mirror: &jetstream.StreamSource{Name: name, External: &jetstream.ExternalStream{
				APIPrefix: "$JS." + HubDomain + ".API", DeliverPrefix: LeafDeliverPrefix(hostID),
			}},
			Storage:           jetstream.FileStorage,
			MaxMsgsPerSubject: 1, // a bucket's history (store.go): 1
			AllowDirect:       true,
			Discard:           jetstream.DiscardNew,
		}
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("leaf: mirror %s: %w", b, err)
		}
		kv, err := js.KeyValue(ctx, b)
		if err != nil {
			return fmt.Errorf("leaf: bind mirror %s: %w", b, err)
		}
		l.kvs[b] = kv
	}
	return nil
}

// KV is the local mirror of bucket (one of LeafBuckets), nil for another.
func (l *Leaf) KV(bucket string) jetstream.KeyValue { return l.kvs[bucket] }

// MirrorState is one mirror's progress: how many messages it holds, how
// far behind the control plane's bucket it is (Lag, in messages) and when
// it last heard from it (Active; -1 never since it started).
type MirrorState struct {
	Bucket string
	Msgs   uint64
	Bytes  uint64
	Lag    uint64
	Active time.Duration
}

// Mirrors reports each mirror's state.
func (l *Leaf) Mirrors(ctx context.Context) ([]MirrorState, error) {
	var out []MirrorState
	for _, b := range l.buckets {
		s, err := l.js.Stream(ctx, "KV_"+b)
		if err != nil {
			return nil, fmt.Errorf("leaf: mirror %s: %w", b, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("leaf: mirror %s: %w", b, err)
		}
		m := MirrorState{Bucket: b, Msgs: info.State.Msgs, Bytes: info.State.Bytes, Active: -1}
		if info.Mirror != nil {
			m.Lag, m.Active = info.Mirror.Lag, info.Mirror.Active
		}
		out = append(out, m)
	}
	return out, nil
}

// Connected says whether the leaf node is connected to the control plane.
func (l *Leaf) Connected() bool { return l.srv.NumLeafNodes() > 0 }

// Shutdown stops the leaf node and waits for it; its mirrors stay on disk.
func (l *Leaf) Shutdown() {
	if l.nc != nil {
		l.nc.Close()
	}
	l.srv.Shutdown()
	l.srv.WaitForShutdown()
}
