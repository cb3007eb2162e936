// Package devcluster is `perch dev`: the whole platform on one machine. It
// runs the control plane in-process and one agent process per region, each
// region's edge on its own loopback address, writes world.json so scripts
// and `perch auth login` can find the world, and on shutdown leaves no
// process, mount, network namespace or veth behind. The end-to-end tests
// use it as a library.
package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/certs"
	"github.com/perchhq/perch/internal/fdstore"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/server"
)

// Options configures a dev world.
type Options struct {
	Dir     string
	Regions []string
	// APIListen is the control plane's address (127.0.0.1:4280 by default;
	// port 0 picks a free one).
	APIListen string
	// EdgeBase is the first region's edge address; the next regions take
	// the next addresses (127.0.1.1, 127.0.1.2, ...).
	EdgeBase netip.Addr
	// NATSURL and NATSToken select an external NATS instead of the
	// embedded one.
	NATSURL   string
	NATSToken string
	// PerchBin is the perch executable agents are run from (this
	// executable by default).
	PerchBin string
	// MachineNet is the range host subnets come from; a /16 that no route
	// of this machine uses if not set.
	MachineNet netip.Prefix
	// HostTimeout is how long a silent host stays up (server default if 0).
	HostTimeout time.Duration
	// MeterInterval is how often agents meter and the control plane
	// checks budgets (billing.DefaultInterval if 0).
	MeterInterval time.Duration
	// Latency is the route-inflation factor of the simulated fiber latency
	// between regions on the mesh (1.5 is typical; 0 is off). `perch dev`
	// turns it on; tests mostly leave it off for speed.
	Latency float64
	// Certs configures certificates. The dev CA is always on in a dev
	// world; set Certs.ACME to issue custom hostnames' certificates too.
	Certs certs.Config
	World *geo.World
	Log   *slog.Logger
	// AgentArgs are added to every agent's command line (e.g.
	// "--image-cache-max", "1").
	AgentArgs []string
	// Anycast builds the world inside the anycast lab (anycastworld.go):
	// a bird2 router and a client per region's city, each agent in its
	// city's host namespace announcing apps' addresses over BGP. The
	// control plane then listens on the lab's management bridge, at
	// APIListen's port; EdgeBase is not used.
	Anycast bool
	// AnycastClients are cities with a router and a client but no region
	// (Anycast): clients far from every announcing region.
	AnycastClients []string
	// Servers is how many control plane servers the world runs: 1 (or
	// 0), in-process as always; 3 or 5, each a `perch server` process,
	// clustered, taking agents' leaf nodes (servers.go).
	Servers int
}

// RegionInfo describes one region's host in world.json.
type RegionInfo struct {
	Code     string `json:"code"`
	EdgeAddr string `json:"edge_addr"`
	HostID   string `json:"host_id"`
	StateDir string `json:"state_dir"`
	PID      int    `json:"pid"`
}

// Info is world.json.
type Info struct {
	APIURL string `json:"api_url"`
	// UIURL is the web dashboard (log in with Token).
	UIURL string `json:"ui_url"`
	// Token is a token of the world's organisation Org: all a user does
	// (launch, deploy, secrets, logs, certs, registry push). The admin
	// token stays in the server's data dir (server/admin-token).
	Token    string       `json:"token"`
	Org      string       `json:"org"`
	Registry string       `json:"registry"`
	Regions  []RegionInfo `json:"regions"`
	PID      int          `json:"pid"`
	Dir      string       `json:"dir"`
	// CACert is the file holding the dev CA's certificate (PEM): trust it
	// to reach https://<app>.perch.local.
	CACert string `json:"ca_cert,omitempty"`
	// Anycast describes the anycast lab of a world started with
	// Options.Anycast.
	Anycast *AnycastInfo `json:"anycast,omitempty"`
	// Servers are the control plane's servers (APIURL is the first's):
	// with Options.Servers above 1 each is a process; in a one-server
	// world the one runs in perch dev up (PID).
	Servers []ServerInfo `json:"servers"`
}

// World is a running dev world.
type World struct {
	opts    Options
	log     *slog.Logger
	srvCfg  server.Config
	srv     *server.Server
	srvStop context.CancelFunc
	srvDone chan struct{}
	// servers are the server processes of a world of several (servers.go).
	servers []*serverProc

	// adminTok is the operator's token (World.Client's; agents join with join tokens).
	adminTok string

	// lifeMu serialises starting and stopping agents (agents.go), so the
	// supervisor never starts one that is being stopped.
	lifeMu sync.Mutex
	mu     sync.Mutex
	agents map[string]*agentProc
	// up: Start has returned, agents that exit are started again; closing:
	// Close has begun, they are not. quickDeaths and restarts by region.
	up, closing bool
	quickDeaths map[string]int
	restarts    map[string]int
	// fdStores keep each region's edge sockets across its agent's
	// restarts (agents.go).
	fdStores map[string]*fdstore.Store
	info     Info
	// releaseNet gives up the world's claim on its machine net.
	releaseNet func()
	// lab is an anycast world's lab; releaseLab gives up its claim.
	lab        *anycast.Lab
	releaseLab func()
}

// InfoPath is where world.json lives in dir.
func InfoPath(dir string) string { return filepath.Join(dir, "world.json") }

// Start brings a world up: the control plane, then one agent per region,
// and returns once every host has registered and heartbeats.
func Start(ctx context.Context, opts Options) (*World, error) {
	if err := CheckServers(opts); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("perch dev needs root: machines run under runc in their own network namespaces; run it with sudo")
	}
	if opts.World == nil {
		opts.World = geo.Default()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if len(opts.Regions) == 0 {
		opts.Regions = []string{"iad", "ams", "sin"}
	}
	if len(opts.Regions) == 1 && opts.Regions[0] == "all" {
		opts.Regions = opts.World.Codes()
	}
	for _, r := range opts.Regions {
		if _, ok := opts.World.Lookup(r); !ok {
			return nil, fmt.Errorf("unknown region %q; known regions: %s", r, strings.Join(opts.World.Codes(), ", "))
		}
	}
	if opts.Anycast && opts.NATSURL != "" {
		return nil, errors.New("--nats does not go with --anycast: the hosts of an anycast world reach only the lab's management network, where the embedded NATS listens")
	}
	if !opts.EdgeBase.IsValid() {
		opts.EdgeBase = netip.MustParseAddr("127.0.1.1")
	}
	if opts.APIListen == "" {
		opts.APIListen = "127.0.0.1:4280"
	}
	if opts.PerchBin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find perch executable: %w", err)
		}
		opts.PerchBin = exe
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("dev dir: %w", err)
	}
	opts.Dir = dir
	if err := checkNotRunning(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("dev dir: %w", err)
	}
	release := func() {}
	if !opts.MachineNet.IsValid() {
		if opts.MachineNet, release, err = claimMachineNet(); err != nil {
			return nil, err
		}
	}
	w := &World{opts: opts, log: opts.Log, agents: map[string]*agentProc{}, releaseNet: release,
		quickDeaths: map[string]int{}, restarts: map[string]int{}, fdStores: map[string]*fdstore.Store{}}
	natsHost, meshHost := "127.0.0.1", "127.0.0.1"
	if opts.Anycast {
		if err := w.startLab(); err != nil {
			release()
			return nil, err
		}
		// Hosts reach the control plane on the management bridge.
		natsHost = w.lab.BridgeAddr().String()
		meshHost = natsHost
		_, port, err := net.SplitHostPort(opts.APIListen)
		if err != nil {
			w.closeLab()
			release()
			return nil, fmt.Errorf("--api %q: %w", opts.APIListen, err)
		}
		opts.APIListen = net.JoinHostPort(natsHost, port)
	}
	natsListen, err := freeAddrOn(natsHost)
	if err != nil {
		w.closeLab()
		release()
		return nil, err
	}
	w.srvCfg = server.Config{
		Listen: opts.APIListen, DataDir: filepath.Join(dir, "server"),
		NATSURL: opts.NATSURL, NATSToken: opts.NATSToken, NATSListen: natsListen,
		MachineNet: opts.MachineNet, HostTimeout: opts.HostTimeout, World: opts.World, Log: opts.Log.With("component", "server"),
		Certs: opts.Certs, MeterInterval: opts.MeterInterval,
		// The control plane is a mesh member too; it sits in the first region.
		Mesh: &server.MeshConfig{Host: meshHost, Region: opts.Regions[0], Latency: opts.Latency},
	}
	if opts.Anycast {
		w.srvCfg.Anycast = anycast.Pools{V4: anycast.LabPool, V6: anycast.LabPool6}
	}
	w.srvCfg.Certs.DevCA = true
	if opts.Servers > 1 {
		err := w.startServers(ctx)
		if err == nil {
			err = w.clusterInfo(ctx)
		}
		if err != nil {
			_ = w.stopServers()
			release()
			return nil, err
		}
		w.mu.Lock()
		w.info.PID, w.info.Dir = os.Getpid(), dir
		w.mu.Unlock()
	} else if err := w.startInProcess(ctx); err != nil {
		w.closeLab()
		release()
		return nil, err
	}
	addr := opts.EdgeBase
	for _, r := range opts.Regions {
		edge := addr.String()
		if w.lab != nil {
			edge = w.lab.MgmtAddr(r).String()
		}
		w.info.Regions = append(w.info.Regions, RegionInfo{Code: r, EdgeAddr: edge, StateDir: filepath.Join(dir, "hosts", r)})
		addr = addr.Next()
	}
	for _, r := range opts.Regions {
		if err := w.StartAgent(ctx, r); err != nil {
			w.Close()
			return nil, err
		}
	}
	if err := w.waitHosts(ctx, 60*time.Second); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.writeInfo(); err != nil {
		w.Close()
		return nil, err
	}
	w.mu.Lock()
	w.up = true
	w.mu.Unlock()
	return w, nil
}

// startInProcess starts a one-server world's control plane in this
// process and fills world.json's fields it gives.
func (w *World) startInProcess(ctx context.Context) error {
	dir := w.opts.Dir
	if err := w.startServer(ctx); err != nil {
		return err
	}
	// Keep the same API port across server restarts.
	w.srvCfg.Listen = w.srv.Addr().String()
	w.adminTok = w.srv.AdminToken()
	orgTok, err := w.srv.MintOrgToken(ctx, server.DefaultOrg, "dev world")
	if err != nil {
		w.stopServer()
		return fmt.Errorf("dev world: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.info = Info{APIURL: w.srv.URL(), UIURL: w.srv.UIURL(), Token: orgTok, Org: server.DefaultOrg, Registry: strings.TrimPrefix(w.srv.URL(), "http://"), PID: os.Getpid(), Dir: dir, Anycast: w.info.Anycast,
		Servers: []ServerInfo{{Name: "s1", APIURL: w.srv.URL(), PID: os.Getpid(), DataDir: w.srvCfg.DataDir}}}
	if w.info.CACert, err = writeCACert(dir, w.srv.DevCACert()); err != nil {
		w.stopServer()
		return err
	}
	return nil
}

// Info describes the world as world.json does.
func (w *World) Info() Info {
	w.mu.Lock()
	defer w.mu.Unlock()
	i := w.info
	i.Regions = slices.Clone(i.Regions)
	i.Servers = slices.Clone(i.Servers)
	return i
}

// Client is an API client with the admin token, failing over between
// the world's servers.
func (w *World) Client() *api.Client {
	return api.NewClient(w.Info().APIURLs(), w.adminTok)
}

// AdminToken is the operator's token (Info's Token is the world
// organisation's).
func (w *World) AdminToken() string { return w.adminTok }

// Server is the in-process control plane: nil in a world of several
// servers (Options.Servers), whose servers are processes.
func (w *World) Server() *server.Server { return w.srv }

func (w *World) startServer(ctx context.Context) error {
	srv, err := server.New(ctx, w.srvCfg)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(sctx); err != nil {
			w.log.Error("control plane stopped", "err", err)
		}
	}()
	w.srv, w.srvStop, w.srvDone = srv, cancel, done
	return nil
}

func (w *World) stopServer() {
	if w.srv == nil {
		return
	}
	w.srvStop()
	<-w.srvDone
	w.srv.Close()
	w.srv = nil
}

// RestartServer stops the control plane and starts it again on the same
// data, address and NATS port; agents reconnect by themselves.
func (w *World) RestartServer(ctx context.Context) error {
	if w.srv == nil {
		return errors.New("RestartServer: the world's servers are processes (Options.Servers)")
	}
	w.stopServer()
	return w.startServer(ctx)
}

// waitHosts waits until every region's host is registered and up.
func (w *World) waitHosts(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := w.Client()
	for {
		hosts, err := c.ListHosts(ctx)
		if err == nil {
			up := map[string]string{}
			for _, h := range hosts {
				if h.Status == api.HostUp && h.Role != api.HostRoleControl {
					up[h.Region] = h.ID
				}
			}
			missing := []string{}
			w.mu.Lock()
			for i, r := range w.info.Regions {
				if id, ok := up[r.Code]; ok && (r.HostID == "" || r.HostID == id) {
					w.info.Regions[i].HostID = id
				} else {
					missing = append(missing, r.Code)
				}
			}
			w.mu.Unlock()
			if len(missing) == 0 {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("hosts of %s did not come up in %s; see %s", strings.Join(missing, ", "), timeout, filepath.Join(w.opts.Dir, "logs"))
			}
		} else if ctx.Err() != nil {
			return fmt.Errorf("control plane not answering: %w", err)
		}
		for _, a := range w.agentList() {
			if err := a.exited(); err != nil {
				return fmt.Errorf("agent for %s exited: %v; its log: %s", a.region, err, a.logPath)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (w *World) writeInfo() error {
	b, err := json.MarshalIndent(w.Info(), "", "  ")
	if err != nil {
		return err
	}
	tmp := InfoPath(w.opts.Dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write world.json: %w", err)
	}
	return os.Rename(tmp, InfoPath(w.opts.Dir))
}

// Close stops every agent, destroys every machine and everything made for
// them in the kernel, stops the control plane and removes world.json.
func (w *World) Close() error {
	var errs []error
	w.lifeMu.Lock()
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	for _, a := range w.agentList() {
		if err := a.stop(); err != nil {
			errs = append(errs, err)
		}
	}
	w.mu.Lock()
	for r, s := range w.fdStores {
		_ = s.Close() // the edges' ports refuse connections from here
		delete(w.fdStores, r)
	}
	w.mu.Unlock()
	w.lifeMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, r := range w.Info().Regions {
		if err := agent.Cleanup(ctx, r.StateDir, shimCommand(w.opts.PerchBin), w.log); err != nil {
			errs = append(errs, fmt.Errorf("clean up %s: %w", r.Code, err))
		}
	}
	w.stopServer()
	if err := w.stopServers(); err != nil {
		errs = append(errs, err)
	}
	w.closeLab()
	_ = os.Remove(InfoPath(w.opts.Dir))
	if w.releaseNet != nil {
		w.releaseNet()
	}
	return errors.Join(errs...)
}

// writeCACert writes the dev CA's certificate to dir/ca.pem for clients
// to trust, and returns the path.
func writeCACert(dir string, pem []byte) (string, error) {
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pem, 0o644); err != nil {
		return "", fmt.Errorf("write the dev CA certificate: %w", err)
	}
	return path, nil
}

// freeAddrOn is a free TCP address on host.
func freeAddrOn(host string) (string, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// checkNotRunning refuses to start a second world in the same directory.
func checkNotRunning(dir string) error {
	b, err := os.ReadFile(InfoPath(dir))
	if err != nil {
		return nil
	}
	var i Info
	if json.Unmarshal(b, &i) == nil && i.PID > 0 && processAlive(i.PID) {
		return fmt.Errorf("a dev world is already running in %s (pid %d); stop it with perch dev down --dir %s", dir, i.PID, dir)
	}
	return nil
}
