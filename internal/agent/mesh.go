package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/meshhost"
)

// startMesh brings up the host's mesh node on the address the control
// plane assigned.
func (a *Agent) startMesh() error {
	addr, err := netip.ParseAddr(a.host.MeshAddr)
	if err != nil {
		return fmt.Errorf("agent: the control plane gave mesh address %q: %w (is it older than this agent?)", a.host.MeshAddr, err)
	}
	if a.sub6, err = netip.ParsePrefix(a.host.Subnet6); err != nil {
		return fmt.Errorf("agent: the control plane gave 6PN subnet %q: %w", a.host.Subnet6, err)
	}
	if m := a.cfg.MeshMTU; m != 0 && (m < 1280 || m > mesh.MaxMTU) {
		return fmt.Errorf("agent: --mesh-mtu %d: want 1280 (IPv6's least) to %d, or 0 for %d", m, mesh.MaxMTU, mesh.MTU)
	}
	mc := meshhost.Config{
		StateDir: a.cfg.StateDir, Addr: addr, Region: a.cfg.Region, Port: a.cfg.MeshPort,
		Latency: a.cfg.MeshLatency, World: a.cfg.World, RTTInterval: a.cfg.MeshRTTInterval, Log: a.log,
		MTU: a.cfg.MeshMTU,
	}
	var m *meshhost.Member
	switch mode := a.cfg.MeshMode; mode {
	case "", string(mesh.ModeNetstack):
		m, err = meshhost.Start(mc)
	case string(mesh.ModeTUN):
		mc.TUN = MeshTUNName(a.host.ID)
		m, err = meshhost.Start(mc)
	case "auto":
		if why := mesh.TUNAvailable(); why != nil {
			a.log.Info("mesh in netstack mode: no TUN device here", "why", why)
			m, err = meshhost.Start(mc)
			break
		}
		mc.TUN = MeshTUNName(a.host.ID)
		if m, err = meshhost.Start(mc); err != nil {
			a.log.Warn("mesh TUN device failed; falling back to netstack mode", "err", err)
			mc.TUN = ""
			m, err = meshhost.Start(mc)
		}
	default:
		return fmt.Errorf("agent: --mesh-mode %q: want netstack, tun or auto", mode)
	}
	if err != nil {
		return fmt.Errorf("agent: mesh: %w", err)
	}
	a.mesh = m
	a.dialer = &meshDialer{m: m, local: edge.NewNetDialer(), pool: mesh.NewRelayPool(m.Node()), conns: map[string]map[*meshConn]struct{}{}}
	a.log.Info("joined the mesh", "mode", m.Node().Mode(), "tun", mc.TUN, "mesh_addr", addr, "subnet6", a.sub6, "udp_port", m.Node().Port(), "simulated_latency", a.cfg.MeshLatency > 0)
	return nil
}

// MeshTUNName is the TUN device that holds host id's mesh address in
// mesh.ModeTUN.
func MeshTUNName(hostID string) string {
	h := sha256.Sum256([]byte(hostID))
	return "pm-" + hex.EncodeToString(h[:4])
}

// meshEndpoint is the UDP endpoint other hosts send this host's WireGuard
// packets to.
func (a *Agent) meshEndpoint() string {
	switch ep := a.cfg.MeshEndpoint; {
	case ep == "":
		return a.mesh.Endpoint(a.cfg.Address)
	case strings.Contains(ep, "]:") || strings.Count(ep, ":") == 1:
		return ep // host:port, as given (a NAT's public port)
	default:
		return a.mesh.Endpoint(ep) // a host: with the bound port
	}
}

// runMesh follows the host list, serves the relay to this host's machines
// and, whenever reachability or the ranking of regions changes, cuts the
// connections to hosts that were lost and has the edge rebuild its table.
//
// It keeps the relay pool warm for the reachable peers: on every change,
// and every poolRewarm for a host that joined without changing the
// ranking.
func (a *Agent) runMesh(ctx context.Context, e *edge.Edge) error {
	defer a.dialer.pool.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { a.mesh.Run(ctx, a.st, a.host.ID) })
	wg.Go(func() {
		t := time.NewTicker(poolRewarm)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a.dialer.pool.Warm(a.mesh.ReachablePeers())
				continue
			case <-a.mesh.Changed():
			}
			a.dialer.dropUnreachable()
			e.Refresh()
		}
	})
	return a.mesh.Node().ServeRelayObserved(ctx, a.relayTarget, a.relays.observe, a.log.With("component", "relay"))
}

// poolRewarm is how often the relay pool's hosts are matched to the
// reachable peers besides the mesh's changes.
const poolRewarm = 10 * time.Second

// relayTarget admits a relay connection only to a machine of this host:
// an address of its /64 whose IPv4 half is in its bridge subnet.
func (a *Agent) relayTarget(t netip.AddrPort) (string, error) {
	v4, ok := mesh.MachineV4(a.sub6, t.Addr())
	if !ok || !a.gw.Contains(v4) || v4 == a.gw.Addr() {
		return "", fmt.Errorf("%s is not a machine address of this host", t.Addr())
	}
	return netip.AddrPortFrom(v4, t.Port()).String(), nil
}

// meshDialer is the edge's Dialer: machines on this host are dialled
// directly, machines on others through their host's relay over the mesh,
// so that user traffic between hosts is only ever inside WireGuard.
type meshDialer struct {
	m     *meshhost.Member
	local *edge.NetDialer
	// pool keeps a connection open to each reachable peer's relay, for
	// Pipelined dials: a first request costs one round trip.
	pool *mesh.RelayPool

	mu    sync.Mutex
	conns map[string]map[*meshConn]struct{} // open connections by host id
}

// errHostLost is what a connection through the mesh returns once its host
// has been found unreachable.
var errHostLost = errors.New("mesh: the machine's host became unreachable")

func (d *meshDialer) DialContext(ctx context.Context, network, addr string, t edge.Target) (net.Conn, error) {
	if t.Local || t.HostID == "" {
		return d.local.DialContext(ctx, network, addr, t)
	}
	if !d.m.Reachable(t.HostID) {
		return nil, fmt.Errorf("dial %s on %s: %w", t.MachineID, t.HostID, errHostLost)
	}
	h, ok := d.m.Host(t.HostID)
	if !ok {
		return nil, fmt.Errorf("dial %s: host %s is not in the host list", t.MachineID, t.HostID)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", t.MachineID, err)
	}
	sub, err1 := netip.ParsePrefix(h.Subnet6)
	hostAddr, err2 := netip.ParseAddr(h.MeshAddr)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("dial %s: host %s has no usable mesh record: %w", t.MachineID, t.HostID, err)
	}
	// A connect costs up to two round trips (TCP, then the relay's answer): allow
	// for that on the slowest path of the world, and no more.
	timeout := 3 * time.Second
	if rtt, ok := d.m.RTTOf(t.HostID); ok {
		timeout = min(timeout, 500*time.Millisecond+4*rtt)
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	target := netip.AddrPortFrom(mesh.MachineAddr(t.Org, sub, ap.Addr()), ap.Port())
	var c net.Conn
	switch {
	case network == "udp":
		c, err = d.m.Node().DialRelayUDP(dctx, hostAddr, target) // datagrams as frames
	case t.Pipelined:
		// The request goes out behind the relay's request line, on a
		// connection from the pool if it has one: its answer comes one
		// round trip after it is sent. A refusal then fails the first
		// Read (meshConn.wrap: edge.ErrNotDelivered); a pooled
		// connection found dead is replayed by the pool.
		c, err = d.pool.Dial(dctx, hostAddr, target)
	default:
		c, err = d.m.Node().DialRelay(dctx, hostAddr, target)
	}
	if err != nil {
		return nil, err
	}
	mc := &meshConn{Conn: c, d: d, host: t.HostID}
	d.mu.Lock()
	if d.conns[t.HostID] == nil {
		d.conns[t.HostID] = map[*meshConn]struct{}{}
	}
	d.conns[t.HostID][mc] = struct{}{}
	d.mu.Unlock()
	return mc, nil
}

// dropUnreachable closes every connection to a host the mesh lost: a
// request waiting on one fails now (and the edge sends it elsewhere if it
// may) instead of waiting for TCP to give up. The pool keeps connections
// to the reachable peers only.
func (d *meshDialer) dropUnreachable() {
	d.pool.Warm(d.m.ReachablePeers())
	d.mu.Lock()
	var drop []*meshConn
	for id, cs := range d.conns {
		if d.m.Reachable(id) {
			continue
		}
		for c := range cs {
			drop = append(drop, c)
		}
	}
	d.mu.Unlock()
	for _, c := range drop {
		c.lost()
	}
}

// meshConn is a connection through the mesh that the dialer can cut.
type meshConn struct {
	net.Conn
	d    *meshDialer
	host string

	once   sync.Once
	mu     sync.Mutex
	isLost bool
}

func (c *meshConn) lost() {
	c.mu.Lock()
	c.isLost = true
	c.mu.Unlock()
	c.Close()
}

func (c *meshConn) wrap(err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
	case c.isLost:
		return fmt.Errorf("%w (%w)", errHostLost, err)
	case errors.Is(err, mesh.ErrRelayRefused), errors.Is(err, mesh.ErrRelayNotForwarded):
		// Only a pipelined connection fails a Read so: the relay passed
		// nothing on, and the edge sends the request elsewhere.
		return fmt.Errorf("%w: %w", edge.ErrNotDelivered, err)
	}
	return err
}

func (c *meshConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	return n, c.wrap(err)
}

func (c *meshConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	return n, c.wrap(err)
}

func (c *meshConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.conns[c.host], c)
		if len(c.d.conns[c.host]) == 0 {
			delete(c.d.conns, c.host)
		}
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite passes a half-close on (raw TCP services need it).
func (c *meshConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
