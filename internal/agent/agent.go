// Package agent is `perch agent`, one per host: it registers the host with
// the control plane, heartbeats, watches the machines placed on it and
// converges each to its desired state through a runtime driver (pull the
// image, unpack it, run it), ships machine output to the log stream, and runs
// the host's edge proxy. It may be restarted at any time: machines keep
// running and are adopted again, never duplicated.
package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/billing"
	"github.com/perchhq/perch/internal/certs"
	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/image"
	"github.com/perchhq/perch/internal/meshhost"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
	"golang.org/x/sys/unix"
)

// Config configures an agent.
type Config struct {
	// Sockets opens the edge's public listeners (nil: net.Listen); perch
	// agent's keeps them in its supervisor's descriptor store (fdstore).
	Sockets   edge.Sockets
	Region    string
	ServerURL string
	// JoinToken joins the host at its first start (credential.go); Token,
	// an operator token, only makes one (deprecated).
	JoinToken string
	Token     string
	StateDir  string
	// Address is how other hosts reach this one (its public or mesh address).
	Address string
	// EdgeAddr is the address the edge proxy listens on.
	EdgeAddr netip.Addr
	// EdgeDomain is the domain apps are reached under (<app>.<domain>).
	EdgeDomain string
	// EdgeHTTP1 is how the edge serves HTTP/1.1 clients (perch agent
	// --http1; edge.Config.HTTP1).
	EdgeHTTP1 edge.HTTP1Mode
	// MetricsAddr is where the host serves Prometheus metrics (GET
	// /metrics): the edge's and the agent's. Empty: not served.
	MetricsAddr string
	// AccessLog receives the edge's access log (one record per request);
	// Log if nil.
	AccessLog *slog.Logger
	CPUs      int
	MemoryMB  int
	// ShimCommand runs the runc shim (the perch binary and its hidden
	// subcommand).
	ShimCommand []string
	RuncPath    string
	Heartbeat   time.Duration
	World       *geo.World
	Log         *slog.Logger

	// MeshPort is the UDP port of the host's WireGuard (0 picks one).
	MeshPort uint16
	// MachineEgress lets machines reach the outside world (not private
	// ranges) through NAT on this host; off, they reach only their
	// organisation's machines and the host's DNS (docs/security.md).
	MachineEgress bool
	// MeshEndpoint is the UDP host:port other hosts send to (behind NAT,
	// the public one); a host alone takes the bound port; Address and the
	// bound port if empty.
	MeshEndpoint string
	// MeshLatency simulates fiber latency between regions on the mesh
	// with this route-inflation factor; 0 is off. One-machine worlds only.
	MeshLatency float64
	// MeshMode is where the mesh's TCP runs: "netstack" (the default, in
	// the process), "tun" (the kernel's, through a TUN device: root), or
	// "auto" (tun where it can be made, else netstack). See mesh.Mode.
	MeshMode string
	// MeshMTU is the mesh's MTU, 0 for mesh.MTU (1420, for 1500-byte
	// links): larger only where every link between hosts carries jumbo
	// frames.
	MeshMTU int
	// MeshRTTInterval is how often each peer's round trip is measured
	// (1 s if 0); a peer is lost after 3 missed probes.
	MeshRTTInterval time.Duration

	// Anycast: the host's anycast addresses and BGP (anycast.go).
	Anycast AnycastConfig

	// MeterInterval is how often machines' time is closed into metering
	// records (billing.DefaultInterval if 0); Clock is their time
	// ($PERCH_CLOCK or the wall clock if nil). metering.go.
	MeterInterval time.Duration
	Clock         billing.Clock

	// ImageCacheMax is the most bytes the image store keeps: beyond it,
	// images no machine of the host uses, and then their layers, are
	// removed, least recently used first. 0 is no limit.
	ImageCacheMax int64
	// ImageLimits bound what one image's layers may write when unpacked
	// (bytes, entries, path depth); zero fields take image's defaults.
	ImageLimits image.Limits

	// NoLeaf connects straight to the control plane's NATS even when it
	// offers leaf nodes (leaf.go): nothing is kept for a cut.
	NoLeaf bool

	// MicroVM configures the microvm runtime (its shim, kernel, init);
	// the agent sets its state dir and logger.
	MicroVM microvm.Config
}

// Agent is a running host agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	anycast *anycastHost // anycast.go
	client  *api.Client
	st      *store.Store
	leaf    *store.Leaf // the host's leaf node (leaf.go), nil without
	host    api.Host
	bridge  string
	gw      netip.Prefix
	images  *image.Store
	pull    image.Options
	// creating is held (read) while a machine is made: image GC waits.
	creating sync.RWMutex
	gcKick   chan struct{}
	disk     atomic.Pointer[api.HostDisk]
	edge     *edge.Edge
	mesh     *meshhost.Member
	dialer   *meshDialer
	relays   relayActivity  // autostop.go
	meter    *billing.Meter // metering.go
	clock    billing.Clock  // billing's (metering.go), also the edge's
	sub6     netip.Prefix   // the 6PN subnet of this host (its number: mesh.MachineAddr)
	statics  *staticCopies  // statics.go

	policyMu sync.Mutex                       // guards policy; held across an nft run
	policy   map[string]hostnet.PolicyMachine // netpolicy.go: by machine key; nil until the bridge exists

	statusQ statusQueue // statusq.go

	mu      sync.Mutex
	workers map[string]*worker // by machine key

	drivers map[string]perchrt.Driver // by runtime name
}

type hostFile struct {
	ID string `json:"id"`
}

// New registers the host and connects to the state store.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Region == "" {
		return nil, errors.New("agent: --region is required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("agent: --state-dir is required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.World == nil {
		cfg.World = geo.Default()
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 2 * time.Second
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = runtime.NumCPU()
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = systemMemoryMB()
	}
	if !cfg.EdgeAddr.IsValid() {
		cfg.EdgeAddr = netip.MustParseAddr("127.0.0.1")
	}
	if cfg.Address == "" {
		cfg.Address = cfg.EdgeAddr.String()
	}
	if cfg.MeshRTTInterval == 0 {
		cfg.MeshRTTInterval = time.Second
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state dir: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Log, workers: map[string]*worker{}}
	if err := a.register(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Agent) register(ctx context.Context) error {
	hostPath := filepath.Join(a.cfg.StateDir, "host.json")
	meshKey, err := meshhost.LoadKey(a.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("agent: mesh key: %w", err)
	}
	cred, err := a.credential(ctx) // credential.go
	if err != nil {
		return err
	}
	a.client = api.NewClient(a.cfg.ServerURL, cred.Bearer())
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := a.lastRegistration(cred.HostID); ok {
		// A cut would hold the start until TCP gives up.
		rctx, cancel = context.WithTimeout(ctx, registerTimeout)
	}
	defer cancel()
	boot, err := a.client.Bootstrap(rctx)
	var h *api.Host
	if err != nil {
		err = fmt.Errorf("agent: bootstrap from %s: %w", a.cfg.ServerURL, err)
	} else {
		h, err = a.client.RegisterHost(rctx, api.Host{
			ID: cred.HostID, Region: a.cfg.Region, Address: a.cfg.Address, EdgeAddr: a.cfg.EdgeAddr.String(),
			CPUs: a.cfg.CPUs, MemoryMB: a.cfg.MemoryMB, MeshKey: meshKey.String(),
		})
		if err != nil {
			err = fmt.Errorf("agent: register host: %w", err)
		}
	}
	if err != nil {
		// Cut off from the control plane: start from the last
		// registration and serve from the leaf node's mirrors (leaf.go).
		reg, ok := a.lastRegistration(cred.HostID)
		if !offline(err) || !ok || ctx.Err() != nil {
			return err
		}
		a.log.Warn("control plane out of reach: starting from the last registration and the leaf node's mirrors", "err", err)
		boot, h = &reg.Boot, &reg.Host
	} else if err := a.saveRegistration(*boot, *h); err != nil {
		return err
	}
	a.host = *h
	b, _ := json.Marshal(hostFile{ID: h.ID})
	if err := os.WriteFile(hostPath, b, 0o600); err != nil {
		return fmt.Errorf("agent: save host id: %w", err)
	}
	auth := store.Auth{Token: boot.NATSToken}
	if boot.NATSUser != "" {
		auth = store.Auth{User: boot.NATSUser, Password: cred.Secret, InboxPrefix: boot.NATSInboxPrefix}
	}
	// A subject this host's NATS user may not use fails only by timing
	// out; the server's reason goes to the log.
	auth.OnError = func(err error) { a.log.Warn("nats", "err", err) }
	st, err := a.openStore(ctx, *boot, auth, cred.Secret) // leaf.go
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.st = st
	sub, err := netip.ParsePrefix(h.Subnet)
	if err != nil {
		return fmt.Errorf("agent: server gave subnet %q: %w", h.Subnet, err)
	}
	a.gw = scheduler.Gateway(sub)
	a.bridge = BridgeName(h.ID)
	a.pull = image.Options{Tokens: map[string]string{boot.Registry: cred.Bearer()}}
	for u := range strings.SplitSeq(a.cfg.ServerURL, ",") { // a cluster's servers
		a.pull.Tokens[registryHost(strings.TrimSpace(u))] = cred.Bearer()
	}
	a.log = a.log.With("host", h.ID, "region", h.Region)
	a.log.Info("host registered", "subnet", h.Subnet, "bridge", a.bridge)
	if err := a.startMeter(); err != nil { // metering.go
		return err
	}
	return nil
}

// BridgeName is the host bridge of host id: stable across restarts and
// distinct between hosts sharing one kernel (a dev world).
func BridgeName(hostID string) string {
	h := sha256.Sum256([]byte(hostID))
	return "pb-" + hex.EncodeToString(h[:4])
}

func registryHost(serverURL string) string {
	s := strings.TrimPrefix(strings.TrimPrefix(serverURL, "http://"), "https://")
	return strings.TrimSuffix(s, "/")
}

// Host is the registered host.
func (a *Agent) Host() api.Host { return a.host }

// Run converges machines and serves the edge until ctx is done. Machines
// keep running after it returns.
func (a *Agent) Run(ctx context.Context) error {
	defer a.st.Close()
	if a.leaf != nil {
		defer a.leaf.Shutdown()
	}
	if err := hostnet.EnsureBridge(a.bridge, a.gw); err != nil {
		return fmt.Errorf("agent: host bridge: %w", err)
	}
	if err := checkNFT(); err != nil { // netpolicy.go
		return err
	}
	a.policy = map[string]hostnet.PolicyMachine{}
	if err := a.startDrivers(); err != nil {
		return err
	}
	if err := a.startMesh(); err != nil {
		return err
	}
	defer a.mesh.Close()
	a.images = image.New(filepath.Join(a.cfg.StateDir, "images"), a.log.With("component", "image"), image.WithLimits(a.cfg.ImageLimits))
	a.gcKick = make(chan struct{}, 1)
	a.statics = newStaticCopies(filepath.Join(a.cfg.StateDir, "statics"), func() *image.Store { return a.images }, a.pull)
	// Certificates are issued by the control plane; the edge serves them
	// from memory, and answers ACME challenges, through this Source.
	certSrc := certs.NewSource(certs.SourceConfig{Store: a.st, HostID: a.host.ID, Log: a.log})
	e, err := edge.New(edge.Config{
		Region: a.cfg.Region, HostID: a.host.ID, Addr: a.cfg.EdgeAddr, Domain: a.cfg.EdgeDomain,
		Store: a.st, Nearness: a.mesh, Reachable: a.mesh.Reachable, Dialer: a.dialer,
		Log: a.log, AccessLog: a.cfg.AccessLog, Certs: certSrc, Starter: starter{a},
		Clock:   a.clock,
		Statics: a.statics,
		HTTP1:   a.cfg.EdgeHTTP1,
		Sockets: a.cfg.Sockets,
	})
	if err != nil {
		return fmt.Errorf("agent: edge: %w", err)
	}
	a.edge = e
	dns, err := a.startDNS(e)
	if err != nil {
		return err
	}
	metricsLn, err := a.listenMetrics()
	if err != nil {
		return err
	}
	// With BGP, a stop (SIGTERM) first withdraws this host's routes and
	// keeps serving for the withdraw wait; then everything stops.
	stopping := ctx
	a.anycast = a.startAnycast(ctx)
	defer a.anycast.close()
	if a.anycast.sp != nil {
		ctx = context.WithoutCancel(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-stopping.Done():
			a.anycast.withdraw(ctx)
			cancel()
		case <-ctx.Done():
		}
	}()
	if sixpn, err := StartSixPN(ctx, a.mesh.Node(), SixPNName(a.host.ID), a.bridge, a.sub6, a.log.With("component", "6pn")); err != nil { // sixpn.go
		// Everything else works without it (the edge uses the relay).
		a.log.Error("machines will not reach other hosts' machines over 6PN", "err", err)
	} else {
		defer func() { cancel(); <-sixpn }()
	}
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(4)
	go func() { defer wg.Done(); errc <- a.runMesh(ctx, e) }()
	go func() { defer wg.Done(); a.heartbeat(ctx) }()
	wg.Go(func() { a.runImageGC(ctx) })
	wg.Go(func() { a.runMeter(ctx) })
	wg.Go(func() { a.runStatusQueue(ctx) }) // statusq.go
	wg.Go(func() { a.runAutostop(ctx, e) })
	wg.Go(func() { a.serveStarts(ctx) })
	wg.Go(func() { a.serveVolumes(ctx) })   // volumes.go
	wg.Go(func() { a.anycast.run(ctx, a) }) // anycast.go
	go func() { defer wg.Done(); errc <- e.Run(ctx) }()
	wg.Go(func() { _ = certSrc.Run(ctx) })
	wg.Go(func() { _ = dns.Run(ctx) })
	if metricsLn != nil {
		wg.Go(func() { a.serveMetrics(ctx, metricsLn, e) })
	}
	go func() { defer wg.Done(); errc <- a.watchMachines(ctx) }()
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		cancel()
	}
	wg.Wait()
	// Not under a.mu: a worker that finishes as it stops forgets itself,
	// which takes a.mu.
	a.mu.Lock()
	workers := make([]*worker, 0, len(a.workers))
	for _, w := range a.workers {
		workers = append(workers, w)
	}
	a.mu.Unlock()
	for _, w := range workers {
		w.wait()
	}
	if runErr != nil && ctx.Err() == nil {
		return runErr
	}
	return nil
}

// heartbeat reports the host alive to the control plane, which writes its
// record: the host's NATS user may only read perch_hosts, so it cannot
// change the subnets and mesh address the control plane assigned.
func (a *Agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	for {
		// A heartbeat that hangs (a frozen server, a write waiting for a
		// quorum, a busy BGP speaker) must not hold back the next: the
		// host would be marked down while alive, its machines out of
		// every edge's rotation.
		hctx, cancel := context.WithTimeout(ctx, 2*a.cfg.Heartbeat)
		hb := api.HostHeartbeat{
			MeshEndpoint: a.meshEndpoint(),
			MeshMode:     string(a.mesh.Node().Mode()),
			RTT:          meshhost.Millis(a.mesh.RTT()),
			BGP:          a.anycast.report(hctx), // anycast.go
			Disk:         a.disk.Load(),
		}
		if hb.Disk == nil { // before the first image collection: the volumes' scheduler needs free space
			var fs unix.Statfs_t
			if unix.Statfs(a.cfg.StateDir, &fs) == nil {
				hb.Disk = &api.HostDisk{FreeBytes: int64(fs.Bavail) * fs.Bsize, TotalBytes: int64(fs.Blocks) * fs.Bsize}
			}
		}
		err := a.client.Heartbeat(hctx, a.host.ID, hb)
		cancel()
		if err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func systemMemoryMB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 1024
	}
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			fmt.Sscan(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), &kb)
		}
	}
	if kb == 0 {
		return 1024
	}
	return kb / 1024
}
