// Package edge is the edge proxy that runs on every host, inside the agent
// process. It listens on the public ports of every app, applies each port's
// handlers (chain.go: "tls", "http", "proxy_proto", none for raw TCP), finds
// the app by TLS server name or Host header and forwards the connection or
// request to a started machine, preferring this edge's region, else the
// nearest region.
//
// The route table lives in memory: watches on the store feed a Table, which
// publishes an immutable Snapshot through an atomic pointer after each change.
// The request path reads only that snapshot, never NATS (DESIGN.md
// invariant 1). Only the agent (and tests, devcluster) import this package.
//
// Extension points: certificates come from a CertSource (internal/certs),
// machines on other hosts are reached through a Dialer (the WireGuard mesh),
// regions are ranked by a Nearness (great-circle distance today,
// measured round-trip time later), and stopped machines are started for
// held requests through a Starter (the agent).
package edge

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"

	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/store"
)

// DefaultDomain is the domain under which every app has a name:
// <app>.perch.local.
const DefaultDomain = "perch.local"

// Config configures an Edge.
type Config struct {
	// Region is the region of the host this edge runs on. Required.
	Region string
	// HostID is the id of this edge's host; it tells the Dialer which
	// machines are local.
	HostID string
	// Addr is the IP address the edge listens on, on every public port.
	// The zero Addr opens no listener: the caller serves Handler itself.
	Addr netip.Addr
	// Domain is the domain of app names; DefaultDomain if empty.
	Domain string
	// Store feeds the route table through watches, and carries the lines
	// the edge writes in apps' logs (applog.go). Nil means the caller
	// feeds the table itself (tests) and apps' logs get nothing.
	Store *store.Store
	// Dialer connects to machines; a plain net.Dialer if nil.
	Dialer Dialer
	// Nearness ranks other regions; great-circle distance from Region if nil.
	Nearness Nearness
	// Reachable says whether the edge can reach host id now (the mesh's
	// view: a host whose probes are lost is not); machines on hosts it
	// cannot reach leave the rotation. Every host is reachable if nil.
	// Call Refresh when its answers change.
	Reachable func(hostID string) bool
	// Log receives diagnostics; silent if nil.
	Log *slog.Logger
	// AccessLog receives one Info record per request (use a JSON handler
	// for a JSON access log); Log if nil.
	AccessLog *slog.Logger
	// Limits protect the edge from slow and greedy clients; zero fields
	// take DefaultLimits.
	Limits Limits
	// Starter starts a stopped machine for a request that has no started
	// machine to go to (autostart.go). Nil: no autostart; such requests
	// get an answer saying the app has no started machine.
	Starter Starter
	// Certs gives the certificates of ports with the "tls" handler and
	// answers ACME challenges. Nil: TLS handshakes fail (no certificate),
	// everything else works.
	Certs CertSource
	// Clock is billing's clock (package billing: $PERCH_CLOCK's FastClock
	// in tests), which says when a suspended app resumes; the wall clock
	// if nil.
	Clock billing.Clock
	// Statics gives the files of apps' [[statics]] (statics.go). Nil: a
	// request under a url_prefix goes to the app.
	Statics StaticFiles
	// HTTP1 chooses how HTTP/1.1 client connections are served (fast.go):
	// HTTP1Fast, the edge's own path, or HTTP1Std, net/http's; "" is
	// the default.
	HTTP1 HTTP1Mode
	// Sockets opens the public TCP ports' listeners; nil is net.Listen.
	// The agent's (package fdstore) keeps them in its supervisor's file
	// descriptor store, so that while the agent restarts the kernel
	// queues connections instead of refusing them.
	Sockets Sockets
}

// Sockets opens and gives up the edge's public listeners (Config.Sockets).
type Sockets interface {
	Listen(network, addr string) (net.Listener, error)
	// Release: the edge closed addr's listener for good (no app serves
	// the port any more).
	Release(network, addr string)
	// ReleaseUnused: the edge's first listeners from a complete route
	// table are open; sockets kept for other ports may go.
	ReleaseUnused()
}

// Edge is the proxy of one host.
type Edge struct {
	cfg       Config
	log       *slog.Logger
	accessLog *slog.Logger
	limits    Limits
	metrics   *metrics
	appLogs   *appLogger
	clients   clientConns
	uploads   uploads // body.go
	table     *table
	proxy     http.Handler
	lns       *listeners
	tls       *tlsConfigs
	demand    demand        // demand.go
	wakes     wakes         // autostart.go
	egress    egressCounter // budget.go
	fastPool  machinePools  // the HTTP/1.1 fast path's machine connections (fastpool.go)

	readyOnce sync.Once
	ready     chan struct{}
}

// New checks cfg and makes an Edge; Run starts it.
func New(cfg Config) (*Edge, error) {
	if cfg.Region == "" {
		return nil, errors.New("edge: config needs the region of this host")
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if cfg.Dialer == nil {
		cfg.Dialer = NewNetDialer()
	}
	if cfg.Nearness == nil {
		cfg.Nearness = GeoNearness(geo.Default(), cfg.Region)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTP1 == "" {
		cfg.HTTP1 = defaultHTTP1
	}
	if _, err := ParseHTTP1Mode(string(cfg.HTTP1)); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = billing.SystemClock{}
	}
	log := cfg.Log.With("component", "edge", "region", cfg.Region)
	e := &Edge{cfg: cfg, log: log, accessLog: log, limits: cfg.Limits.withDefaults(), ready: make(chan struct{})}
	if cfg.AccessLog != nil {
		e.accessLog = cfg.AccessLog.With("component", "edge", "region", cfg.Region)
	}
	e.clients.n = map[netip.Addr]int{}
	e.table = newTable(cfg.Region, cfg.HostID, cfg.Domain, cfg.Nearness, log, e.committed)
	e.table.reachable = cfg.Reachable
	e.metrics = newMetrics(e.table)
	e.table.book.forget = e.metrics.forget
	e.table.book.forgetApp = e.metrics.forgetApp
	e.appLogs = newAppLogger(cfg.Region, cfg.Store, log)
	e.proxy = e.newProxy()
	e.lns = newListeners(e)
	e.tls = newTLSConfigs(cfg.Certs)
	return e, nil
}

// Run feeds the route table from the store (when Config.Store is set) and
// keeps a listener open on every public port of every app. It returns
// when ctx is done, after closing the listeners.
func (e *Edge) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	if e.cfg.Store != nil {
		wg.Go(func() { e.watch(ctx) })
		wg.Go(func() { e.serveDrains(ctx, e.cfg.Store.Conn()) })
		wg.Go(func() { e.publishDemand(ctx, e.cfg.Store.Conn()) })
		if e.cfg.Store.Tickets != nil {
			wg.Go(func() { e.runTickets(ctx, e.cfg.Store.Tickets) }) // tickets.go
		}
	}
	e.lns.run(ctx)
	wg.Wait()
	e.fastPool.closeAll()
	e.appLogs.close()
	return nil
}

// Ready is closed once the route table has been built for the first time
// (for a store-fed edge: once every bucket has been read).
func (e *Edge) Ready() <-chan struct{} { return e.ready }

// Snapshot is the route table the request path currently uses.
func (e *Edge) Snapshot() *Snapshot { return e.table.Snapshot() }

// Listening is the public ports the edge has a listener open on, sorted.
func (e *Edge) Listening() []int { return e.lns.ports() }

// ListeningDedicated is the ports of apps' own anycast addresses the edge
// has a listener on (anycast.go).
func (e *Edge) ListeningDedicated() []netip.AddrPort { return e.lns.dedicatedAddrs() }

// ListeningDedicatedUDP is the UDP ports of apps' own anycast addresses
// the edge has open.
func (e *Edge) ListeningDedicatedUDP() []netip.AddrPort { return e.lns.dedicatedUDPAddrs() }

// ListeningUDP is the public UDP ports the edge has open.
func (e *Edge) ListeningUDP() []int { return e.lns.udpPorts() }

// Handler serves requests that arrived on public port port: what a listener
// of that port runs, and what tests put behind httptest.
func (e *Edge) Handler(port int) http.Handler {
	return &portHandler{e: e, port: port, portStr: strconv.Itoa(port)}
}

// appHandler is Handler for app's own address: other apps are refused.
func (e *Edge) appHandler(port int, app string) http.Handler {
	var h http.Handler = &portHandler{e: e, port: port, portStr: strconv.Itoa(port), only: app}
	if e.cfg.Certs != nil {
		h = e.cfg.Certs.HTTPChallenge(h)
	}
	return h
}

// Refresh rebuilds the route table from what it holds, for a change the
// store does not carry: the Nearness ranks regions anew, Reachable is asked
// again. It does nothing before the table was first built.
func (e *Edge) Refresh() {
	select {
	case <-e.ready:
		e.table.commit()
	default:
	}
}

// committed is called by the table after each new snapshot.
func (e *Edge) committed() {
	e.readyOnce.Do(func() { close(e.ready) })
}

// AppOrg is app's organisation as the route table knows it ("" if it does
// not know the app).
func (e *Edge) AppOrg(app string) string {
	e.table.mu.Lock()
	defer e.table.mu.Unlock()
	return e.table.apps[app].Org
}
