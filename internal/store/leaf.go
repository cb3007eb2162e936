package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
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
	cfg  LeafConfig
	urls []*url.URL
	srv  atomic.Pointer[server.Server] // replaced by a restart (watchLink)
	nc   *nats.Conn
	js   jetstream.JetStream
	kvs  map[string]jetstream.KeyValue
	log  *slog.Logger

	buckets []string
	stop    chan struct{}
	done    chan struct{}

	mu      sync.Mutex
	onReset func() // OpenHostLeaf's: watches of the mirrors start over
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
	if cfg.Buckets == nil {
		cfg.Buckets = LeafBuckets
	}
	l := &Leaf{cfg: cfg, urls: urls, kvs: map[string]jetstream.KeyValue{}, buckets: cfg.Buckets, log: cfg.Log,
		stop: make(chan struct{}), done: make(chan struct{})}
	srv, err := l.startServer()
	if err != nil {
		return nil, err
	}
	l.srv.Store(srv)
	if err := l.open(ctx, cfg.HostID); err != nil {
		close(l.done)
		l.Shutdown()
		return nil, err
	}
	go l.watchLink()
	cfg.Log.Info("leaf node started", "dir", cfg.Dir, "domain", LeafDomain(cfg.HostID), "remotes", len(urls))
	return l, nil
}

func (l *Leaf) startServer() (*server.Server, error) {
	opts := &server.Options{
		ServerName:      "leaf-" + l.cfg.HostID,
		DontListen:      true,
		JetStream:       true,
		JetStreamDomain: LeafDomain(l.cfg.HostID),
		StoreDir:        l.cfg.Dir,
		NoSigs:          true,
		NoLog:           true,
		MaxPayload:      8 << 20,
		LeafNode: server.LeafNodeOpts{
			ReconnectInterval: time.Second,
			Remotes:           []*server.RemoteLeafOpts{{URLs: l.urls}},
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
	return srv, nil
}

// InProcessConn connects to the leaf's current server (nats.go's
// InProcessConnProvider): the in-process connection follows a restart.
func (l *Leaf) InProcessConn() (net.Conn, error) { return l.srv.Load().InProcessConn() }

func (l *Leaf) open(ctx context.Context, hostID string) error {
	nc, err := nats.Connect("", nats.InProcessServer(l), nats.Name("perch-leaf-"+hostID), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
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
func (l *Leaf) Connected() bool { return l.srv.Load().NumLeafNodes() > 0 }

// Shutdown stops the leaf node and waits for it; its mirrors stay on disk.
func (l *Leaf) Shutdown() {
	close(l.stop)
	<-l.done
	if l.nc != nil {
		l.nc.Close()
	}
	srv := l.srv.Load()
	srv.Shutdown()
	srv.WaitForShutdown()
}

// linkCheck is how often the leaf looks at its link to the control plane,
// mirrorFresh how recently a working mirror heard from the control plane
// (its consumer's heartbeat is every second), and mirrorKick how long
// after the link returns the leaf waits for every mirror to be working.
var (
	linkCheck   = time.Second
	mirrorFresh = 3 * time.Second
	mirrorKick  = 5 * time.Second
)

// watchLink restarts the leaf's nats-server when its link to the control
// plane comes back and a mirror does not resume. A mirror that asked the
// control plane for its consumer during the cut waits 30 s for an answer
// that never comes (nats-server 2.15 does not cut it short when the link
// returns); restarted, every mirror asks again at once, and what it holds
// stays on disk.
func (l *Leaf) watchLink() {
	defer close(l.done)
	t := time.NewTicker(linkCheck)
	defer t.Stop()
	up := l.Connected()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		now := l.Connected()
		if now && !up && !l.mirrorsResume() {
			if err := l.restart(); err != nil {
				l.log.Error("leaf: restarting for the mirrors to catch up", "err", err)
			} else {
				l.log.Info("leaf: link back; restarted for the mirrors to catch up")
			}
			now = l.Connected()
		}
		up = now
	}
}

// mirrorsResume waits up to mirrorKick for every mirror to hear from the
// control plane.
func (l *Leaf) mirrorsResume() bool {
	deadline := time.Now().Add(mirrorKick)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		ms, err := l.Mirrors(ctx)
		cancel()
		fresh := err == nil
		for _, m := range ms {
			fresh = fresh && m.Active >= 0 && m.Active < mirrorFresh
		}
		if fresh {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-l.stop:
			return true
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// restart replaces the leaf's nats-server with a new one on the same
// store; the in-process connection reconnects to it and every watch
// starts over (onReset).
func (l *Leaf) restart() error {
	old := l.srv.Load()
	old.Shutdown()
	old.WaitForShutdown()
	srv, err := l.startServer()
	if err != nil {
		return err
	}
	l.srv.Store(srv)
	deadline := time.Now().Add(10 * time.Second)
	for !l.nc.IsConnected() {
		if time.Now().After(deadline) {
			return errors.New("leaf: the in-process connection did not come back in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.mu.Lock()
	f := l.onReset
	l.mu.Unlock()
	if f != nil {
		f()
	}
	return nil
}

func (l *Leaf) setOnReset(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onReset = f
}
