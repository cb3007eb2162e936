// Package server is the control plane behind `perch server`: the REST API
// shaped like Fly's Machines API, bearer-token auth, the scheduler's caller,
// the OCI registry under /v2/, and the monitor that marks silent hosts down.
// Its state lives in NATS JetStream (package store), embedded by default.
// Only cmd wiring, devcluster and tests import it.
package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/perchhq/perch/internal/anycast"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/autoscale"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/certs"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/registry"
	"github.com/perchhq/perch/internal/secrets"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/ui"
)

// Config configures a control plane.
type Config struct {
	// Listen is the API and registry address, ":4280" by default.
	Listen string
	// DataDir holds the embedded NATS data, registry blobs and tokens.
	DataDir string
	// NATSURL selects an external NATS; empty runs nats-server embedded.
	NATSURL   string
	NATSToken string
	// NATSListen is where the embedded NATS listens (default 127.0.0.1:4281).
	NATSListen string
	// NATSAdvertise is the NATS URL handed to agents (default: the
	// embedded server's URL or NATSURL); several, comma-separated, for a
	// cluster's servers.
	NATSAdvertise string
	// LeafListen, if set, is where the embedded NATS takes hosts' leaf
	// nodes (host:port): each agent then keeps local mirrors of what it
	// serves (store.RunLeaf). LeafAdvertise is the leaf URL handed to
	// agents (default: nats-leaf:// of LeafListen); several,
	// comma-separated, for a cluster's servers.
	LeafListen, LeafAdvertise string
	// Cluster, if set with a name, joins the embedded NATS to the other
	// servers' (perch server --cluster-name; docs/servers.md): buckets and
	// streams replicated on up to three, jobs that must run once under
	// leases, placement under a cluster-wide lock.
	Cluster *store.Cluster
	// MachineNet is the range host subnets (/24 each) are taken from.
	MachineNet netip.Prefix
	// HostTimeout is how long a host may stay silent before it is down.
	HostTimeout time.Duration
	// LogBytesPerApp is the size of each app's log stream
	// (store.LogBytesPerApp if 0): an app's oldest lines go beyond it,
	// never another app's.
	LogBytesPerApp int64
	// Certs configures certificates: the ACME CA for custom hostnames and
	// the dev CA.
	Certs certs.Config
	// Mesh, if set, makes the control plane a member of the WireGuard
	// mesh (its own record in the host list, role "control").
	Mesh  *MeshConfig
	World *geo.World
	Log   *slog.Logger
	// Limiter is asked before the autoscaler adds a machine (the budget
	// seam); autoscale.AllowAll if nil. AutoscaleInterval is how often it
	// decides (autoscale.Interval if 0).
	Limiter           autoscale.Limiter
	AutoscaleInterval time.Duration
	// Prices price usage (billing.DefaultPrices if nil: perch server
	// --prices FILE); Clock tells billing's time ($PERCH_CLOCK or the wall
	// clock if nil); MeterInterval is how often budgets are checked
	// (billing.DefaultInterval if 0). billing.go.
	Prices        *billing.Prices
	Clock         billing.Clock
	MeterInterval time.Duration
	// RotateSecretsKey replaces the secrets master key at start
	// (perch server --rotate-secrets-key; docs/secrets.md).
	RotateSecretsKey bool
	// Registry bounds blob uploads (idle timeout, size cap); zero fields
	// take registry's defaults.
	Registry registry.Options
	// Anycast are the pools apps' addresses come from (perch server
	// --anycast-v4, --anycast-v6; ips.go). None: every app shares each
	// edge's address.
	Anycast anycast.Pools
}

// leaseTTL is how long the jobs that run on one server (host-monitor,
// auto-destroy, cert-renewal) stay with a server that died before
// another takes them over.
const leaseTTL = 15 * time.Second

// Server is a running control plane.
type Server struct {
	cfg      Config
	log      *slog.Logger
	nats     *store.Embedded
	st       *store.Store
	certs    *certs.Manager
	reg      *registry.Registry
	ln       net.Listener
	http     *http.Server
	natsURL  string
	natsTok  string
	tokPath  string
	adminTok string
	hostMu   clusterLock // serialises subnet assignment (clusterlock.go)
	placeMu  clusterLock // serialises placement

	quorumCheck atomic.Pointer[quorumCheck] // quorum.go

	autoscaler *autoscale.Loop  // autoscale.go
	billing    *billingState    // billing.go
	keys       *secrets.Keyring // secrets.go

	tokens *auth.Authority // organisations' tokens (auth.go)
	ui     *ui.UI          // the dashboard under /ui/ (dashboard.go)
	grants *machineGrants  // hostauth.go
}

// New starts the state store and binds the API listener; Serve serves it.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Listen == "" {
		cfg.Listen = ":4280"
	}
	if cfg.NATSListen == "" {
		cfg.NATSListen = "127.0.0.1:4281"
	}
	if !cfg.MachineNet.IsValid() {
		cfg.MachineNet = netip.MustParsePrefix("172.30.0.0/16")
	}
	if cfg.HostTimeout == 0 {
		cfg.HostTimeout = 10 * time.Second
	}
	if cfg.World == nil {
		cfg.World = geo.Default()
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("server: a data directory is required (--data-dir)")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	if err := s.openStore(ctx); err != nil {
		return nil, err
	}
	if s.clustered() {
		s.waitMetaCurrent(ctx, 30*time.Second)
		s.hostMu = clusterLock{name: "hosts", st: s.st, log: s.log}
		s.placeMu = clusterLock{name: "placement", st: s.st, log: s.log}
	}
	if err := s.retryStart(ctx, func() error { return s.ensureAdminToken(ctx) }); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.openTokens(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.retryStart(ctx, func() error { return s.ensureOrg(ctx, DefaultOrg) }); err != nil {
		s.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	if err := s.retryStart(ctx, func() error { return s.ensureLogStreams(ctx) }); err != nil { // logs.go
		s.Close()
		return nil, err
	}
	if err := s.retryStart(ctx, func() error { return s.loadHostUsers(ctx) }); err != nil { // hostauth.go
		s.Close()
		return nil, err
	}
	if err := s.openSecrets(ctx, cfg.RotateSecretsKey); err != nil {
		s.Close()
		return nil, err
	}
	cm, err := certs.NewManager(ctx, s.st, cfg.Certs, cfg.Log)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("server: %w", err)
	}
	s.certs = cm
	if pem := cm.DevCACert(); len(pem) > 0 {
		// For clients to trust (a dev world's ca.pem when its servers are
		// processes of their own).
		if err := os.WriteFile(filepath.Join(cfg.DataDir, DevCAFile), pem, 0o644); err != nil {
			s.Close()
			return nil, fmt.Errorf("server: write the dev CA's certificate: %w", err)
		}
	}
	reg, err := registry.New(ctx, filepath.Join(cfg.DataDir, "registry"), registry.Shared{
		JS: s.st.JetStream(), Blobs: s.st.Registry, Stream: store.StreamRegistry, Subject: store.SubjectRegistry,
	}, registryAuth{s}, cfg.Registry, cfg.Log.With("component", "registry"))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("server: registry: %w", err)
	}
	s.reg = reg
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("server: listen on %s: %w (is another perch server running? pick another with --listen)", cfg.Listen, err)
	}
	s.ln = ln
	if err := s.setupBilling(ctx); err != nil {
		s.Close()
		return nil, err
	}
	if cfg.Limiter == nil {
		cfg.Limiter = budgetLimiter{s}
	}
	s.autoscaler = autoscale.NewLoop(autoscale.LoopConfig{Store: s.st, Cluster: cluster{s}, Limiter: cfg.Limiter,
		Interval: cfg.AutoscaleInterval, Nearest: s.nearest, Log: cfg.Log})
	handler, err := s.withDashboard(s.requireQuorum(s.routes())) // dashboard.go, quorum.go
	if err != nil {
		s.Close()
		return nil, err
	}
	s.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func (s *Server) openStore(ctx context.Context) error {
	if s.cfg.NATSURL != "" {
		s.natsURL, s.natsTok = s.cfg.NATSURL, s.cfg.NATSToken
	} else {
		tok, err := readOrCreateSecret(filepath.Join(s.cfg.DataDir, "nats-token"))
		if err != nil {
			return fmt.Errorf("server: nats token: %w", err)
		}
		e, err := store.RunEmbeddedWith(filepath.Join(s.cfg.DataDir, "nats"), s.cfg.NATSListen, tok,
			store.EmbeddedOptions{Cluster: s.cfg.Cluster, LeafListen: s.cfg.LeafListen}, s.log.With("component", "nats"))
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		s.nats, s.natsURL, s.natsTok = e, e.URL(), tok
	}
	auth := store.Auth{Token: s.natsTok}
	if s.nats != nil {
		auth = store.Auth{User: store.ServerUser, Password: s.natsTok}
	}
	opts := store.Options{Replicas: s.cfg.Cluster.Replicas()}
	if c := s.cfg.Cluster; s.clustered() && c.Peers[0] != c.Listen {
		opts.Follower = true // the first peer makes the buckets and streams
	}
	if s.nats != nil {
		opts.Holder = s.nats.ServerName()
	}
	st, err := store.OpenWith(ctx, s.natsURL, auth, "perch-server", opts)
	if err != nil {
		if s.nats != nil {
			s.nats.Shutdown()
		}
		return fmt.Errorf("server: %w", err)
	}
	s.st = st
	return nil
}

// retryStart runs a step of a clustered server's start again while it
// fails, up to two minutes: a server rejoining a cluster starts while
// its JetStream may still answer "temporarily unavailable". A server
// alone runs it once.
func (s *Server) retryStart(ctx context.Context, step func() error) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := step()
		if err == nil || !s.clustered() || ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		s.log.Warn("start: retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitMetaCurrent waits, up to d, until this clustered server's
// JetStream has every meta operation and sees a leader and a quorum: a
// server that just joined a running cluster (docs/operations.md, adding
// a server) would otherwise answer its first writes 503, its view of the
// cluster still partial.
func (s *Server) waitMetaCurrent(ctx context.Context, d time.Duration) {
	if s.nats == nil {
		return
	}
	deadline := time.Now().Add(d)
	for {
		m := s.nats.Meta()
		if m.Leader != "" && m.SelfCurrent && m.Quorum() {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.log.Warn("start: JetStream is not current with the cluster's meta leader yet; going on", "leader", m.Leader, "current", m.SelfCurrent)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// clustered says whether this server is one of a cluster's.
func (s *Server) clustered() bool { return s.cfg.Cluster != nil && s.cfg.Cluster.Name != "" }

// Name is the server's name in its cluster (its embedded NATS's), or
// empty with an external NATS.
func (s *Server) Name() string {
	if s.nats == nil {
		return ""
	}
	return s.nats.ServerName()
}

// Addr is the API's listen address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the API's base URL.
func (s *Server) URL() string {
	a := s.ln.Addr().(*net.TCPAddr)
	host := a.IP.String()
	if a.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, fmt.Sprint(a.Port))
}

// AdminToken is the admin token created on first start.
func (s *Server) AdminToken() string { return s.adminTok }

// TokenPath is the file the admin token was written to.
func (s *Server) TokenPath() string { return s.tokPath }

// Store is the server's state store connection.
func (s *Server) Store() *store.Store { return s.st }

// DevCAFile is the file in the data dir holding the dev CA's certificate
// (PEM) when Config.Certs.DevCA is on.
const DevCAFile = "dev-ca.pem"

// DevCACert is the dev CA's certificate (PEM) when Config.Certs.DevCA is
// set, for clients to trust; nil otherwise.
func (s *Server) DevCACert() []byte { return s.certs.DevCACert() }

// Serve serves the API until ctx is done, running the host monitor and
// the certificate manager beside it.
func (s *Server) Serve(ctx context.Context) error {
	hmCtx, hmCancel := context.WithCancel(ctx)
	hmDone := make(chan struct{})
	go func() { // hosts.go
		defer close(hmDone)
		_ = s.st.RunHeld(hmCtx, "host-monitor", leaseTTL, s.log, s.monitorHosts)
	}()
	// Waited for, so that the lease is given back before the store closes.
	defer func() { hmCancel(); <-hmDone }()
	gctx, gcancel := context.WithCancel(ctx)
	grantsDone := make(chan struct{})
	go func() { defer close(grantsDone); s.runGrants(gctx) }() // hostauth.go
	defer func() { gcancel(); <-grantsDone }()
	bctx, bcancel := context.WithCancel(ctx)
	billDone := make(chan struct{})
	go func() { defer close(billDone); s.runBilling(bctx) }()
	defer func() { bcancel(); <-billDone }()
	adCtx, adCancel := context.WithCancel(ctx)
	adDone := make(chan struct{})
	go func() { // autodestroy.go
		defer close(adDone)
		_ = s.st.RunHeld(adCtx, "auto-destroy", leaseTTL, s.log, s.autoDestroy)
	}()
	defer func() { adCancel(); <-adDone }()
	vsCtx, vsCancel := context.WithCancel(ctx)
	vsDone := make(chan struct{})
	go func() { defer close(vsDone); s.runVolumeSnapshots(vsCtx) }() // volumes.go
	defer func() { vsCancel(); <-vsDone }()
	asDone := make(chan struct{})
	actx, acancel := context.WithCancel(ctx)
	go func() {
		defer close(asDone)
		if err := s.autoscaler.Run(actx); err != nil && actx.Err() == nil {
			s.log.Error("autoscaler stopped", "err", err)
		}
	}()
	defer func() { acancel(); <-asDone }()
	if s.cfg.Mesh != nil {
		m, id, err := s.joinMesh(ctx)
		if err != nil {
			return err
		}
		defer m.Close()
		mctx, mcancel := context.WithCancel(ctx)
		meshDone := make(chan struct{})
		go func() { defer close(meshDone); s.runMesh(mctx, m, id) }()
		defer func() { mcancel(); <-meshDone }()
	}
	uctx, ucancel := context.WithCancel(ctx)
	uiDone := make(chan struct{})
	go func() { defer close(uiDone); s.ui.Run(uctx) }() // the dashboard's live updates
	defer func() { ucancel(); <-uiDone }()
	cctx, cancel := context.WithCancel(ctx)
	certsDone := make(chan struct{})
	go func() { defer close(certsDone); _ = s.certs.Run(cctx) }()
	defer func() { cancel(); <-certsDone }()
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	select {
	case <-ctx.Done():
		ucancel() // ends the dashboard's event streams, which Shutdown would wait for
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.http.Shutdown(sctx)
		return nil
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	}
}

// Close releases the store and the embedded NATS.
func (s *Server) Close() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.certs != nil {
		s.certs.Close()
	}
	if s.reg != nil {
		s.reg.Close()
	}
	if s.st != nil {
		s.st.Close()
	}
	if s.nats != nil {
		s.nats.Shutdown()
	}
}
