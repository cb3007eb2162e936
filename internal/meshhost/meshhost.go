// Package meshhost makes a host (an agent, or the control plane) a member
// of the WireGuard mesh through the control plane's host list: it keeps
// the host's key, runs its mesh.Node, turns the records in perch_hosts into
// the node's peers as hosts join, leave or go down, and turns the node's
// round-trip measurements into what the edge needs: which hosts are
// reachable, and regions ranked by measured round-trip time.
//
// The host's own record is written by its owner (the agent's heartbeat,
// the server's registration); this package only reads the list.
package meshhost

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/store"
)

// DefaultPort is WireGuard's usual UDP port.
const DefaultPort = 51820

// Config configures a member.
type Config struct {
	// StateDir holds the private key (mesh.key); it never leaves it.
	StateDir string
	// Addr is the mesh address the control plane assigned.
	Addr   netip.Addr
	Region string
	// Port is the UDP port of WireGuard on every address (0 picks one).
	Port uint16
	// Latency turns on the simulated fiber latency between regions, with
	// this route-inflation factor (1.5 is typical); 0 is off. For one-machine
	// worlds only: a real network has its own latency.
	Latency float64
	World   *geo.World
	// RTTInterval is how often each peer is probed (mesh's default if 0).
	RTTInterval time.Duration
	// TUN, if set, runs the node in mesh.ModeTUN on a kernel TUN device of
	// this name in the process's network namespace; empty is ModeNetstack.
	TUN string
	// MTU is the mesh's MTU (mesh.MTU if 0): see mesh.Config.MTU.
	MTU int
	Log *slog.Logger
}

// Member is a running mesh node fed by the control plane's host list.
type Member struct {
	cfg  Config
	log  *slog.Logger
	node *mesh.Node
	key  mesh.PublicKey

	mu      sync.Mutex
	selfID  string
	hosts   map[string]api.Host       // every host record, by id
	byKey   map[mesh.PublicKey]string // peer key -> host id
	rtt     map[string]time.Duration  // measured, by host id
	lost    map[string]bool           // peers whose probes are lost
	rank    []string                  // regions, nearest first, last computed
	changed chan struct{}
}

// LoadKey reads or creates the host's key in stateDir and returns its
// public half, for the host's registration.
func LoadKey(stateDir string) (mesh.PublicKey, error) {
	k, err := mesh.LoadOrCreateKey(stateDir)
	if err != nil {
		return mesh.PublicKey{}, err
	}
	return k.Public(), nil
}

// Start brings the node up.
func Start(cfg Config) (*Member, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.World == nil {
		cfg.World = geo.Default()
	}
	key, err := mesh.LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	mc := mesh.Config{
		Key: key, Addr: cfg.Addr, ListenPort: cfg.Port, Region: cfg.Region,
		RTTInterval: cfg.RTTInterval, Logger: cfg.Log.With("component", "mesh"), TUN: cfg.TUN, MTU: cfg.MTU,
	}
	if cfg.Latency > 0 {
		mc.OneWay = mesh.FiberOneWay(cfg.World, cfg.Latency)
	}
	n, err := mesh.New(mc)
	if err != nil {
		return nil, err
	}
	return &Member{
		cfg: cfg, log: cfg.Log.With("component", "mesh"), node: n, key: key.Public(),
		hosts: map[string]api.Host{}, byKey: map[mesh.PublicKey]string{},
		rtt: map[string]time.Duration{}, lost: map[string]bool{},
		changed: make(chan struct{}, 1),
	}, nil
}

// Node is the member's mesh node.
func (m *Member) Node() *mesh.Node { return m.node }

// PublicKey is the member's public key, as published.
func (m *Member) PublicKey() string { return m.key.String() }

// Endpoint is the UDP endpoint to publish for a host reachable at host.
func (m *Member) Endpoint(host string) string {
	return netipJoin(host, m.node.Port())
}

func netipJoin(host string, port uint16) string {
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a, port).String()
	}
	return host + ":" + strconv.Itoa(int(port))
}

// Close stops the node.
func (m *Member) Close() error { return m.node.Close() }

// Changed gets a token whenever the set of reachable hosts or the ranking
// of regions changes: the edge rebuilds its table then.
func (m *Member) Changed() <-chan struct{} { return m.changed }

// Run follows the host list until ctx is done: selfID is this member's own
// record, which it skips.
func (m *Member) Run(ctx context.Context, st *store.Store, selfID string) {
	m.mu.Lock()
	m.selfID = selfID
	m.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.measure(ctx) })
	watchHosts(ctx, st, m.log, func(all map[string]api.Host) { m.setHosts(all) })
}

// setHosts makes the node's peers the hosts of all that are up and
// published their mesh identity.
func (m *Member) setHosts(all map[string]api.Host) {
	m.mu.Lock()
	m.hosts = all
	self := m.selfID
	m.mu.Unlock()
	var peers []mesh.Peer
	byKey := map[mesh.PublicKey]string{}
	for _, id := range slices.Sorted(maps.Keys(all)) {
		h := all[id]
		if id == self || h.Status != api.HostUp || h.MeshKey == "" || h.MeshEndpoint == "" {
			continue
		}
		p, err := PeerOf(h)
		if err != nil {
			m.log.Warn("host's mesh record is unusable; leaving it out", "host", id, "err", err)
			continue
		}
		if p.PublicKey == m.key {
			continue
		}
		peers = append(peers, p)
		byKey[p.PublicKey] = id
	}
	if err := m.node.SetPeers(peers); err != nil {
		m.log.Warn("cannot set mesh peers", "err", err)
		return
	}
	m.mu.Lock()
	m.byKey = byKey
	m.mu.Unlock()
	m.update()
}

// PeerOf is the mesh peer a host record describes.
func PeerOf(h api.Host) (mesh.Peer, error) {
	var p mesh.Peer
	if err := p.PublicKey.UnmarshalText([]byte(h.MeshKey)); err != nil {
		return p, fmt.Errorf("public key: %w", err)
	}
	ep, err := netip.ParseAddrPort(h.MeshEndpoint)
	if err != nil {
		return p, fmt.Errorf("endpoint %q: %w", h.MeshEndpoint, err)
	}
	addr, err := netip.ParseAddr(h.MeshAddr)
	if err != nil {
		return p, fmt.Errorf("mesh address %q: %w", h.MeshAddr, err)
	}
	p.Endpoint, p.Addr, p.Region = ep, addr, h.Region
	if h.Subnet6 != "" {
		if p.Subnet, err = netip.ParsePrefix(h.Subnet6); err != nil {
			return p, fmt.Errorf("subnet6 %q: %w", h.Subnet6, err)
		}
	}
	return p, p.Validate()
}

// measure reads the node's round-trip times every probe interval.
func (m *Member) measure(ctx context.Context) {
	every := m.cfg.RTTInterval
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.update()
	}
}

// update reads the node's measurements and signals Changed when what the
// edge routes on moved.
func (m *Member) update() {
	rtts, lostKeys := m.node.RTTs(), m.node.Lost()
	m.mu.Lock()
	rtt := map[string]time.Duration{}
	lost := map[string]bool{}
	for k, d := range rtts {
		if id, ok := m.byKey[k]; ok {
			rtt[id] = d
		}
	}
	for k := range lostKeys {
		if id, ok := m.byKey[k]; ok {
			lost[id] = true
		}
	}
	// A host the control plane marked down left the peer list and is no
	// longer probed: it counts as lost too, whichever noticed first.
	for id, h := range m.hosts {
		if id != m.selfID && h.Status != api.HostUp && h.Role != api.HostRoleControl {
			lost[id] = true
		}
	}
	newlyLost, back := diffKeys(m.lost, lost)
	// A peer measured for the first time (its handshake done) is one the
	// relay pool may warm now: a change too.
	measured := false
	for id := range rtt {
		if _, ok := m.rtt[id]; !ok {
			measured = true
		}
	}
	m.rtt, m.lost = rtt, lost
	rank := m.rankLocked(m.cfg.World.Codes())
	moved := !slices.Equal(rank, m.rank)
	m.rank = rank
	m.mu.Unlock()
	for _, id := range newlyLost {
		m.log.Warn("host unreachable over the mesh: its machines leave this host's rotation", "peer", id)
	}
	for _, id := range back {
		m.log.Info("host reachable over the mesh again", "peer", id)
	}
	if moved || measured || len(newlyLost) > 0 || len(back) > 0 {
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
}

func diffKeys(old, cur map[string]bool) (added, removed []string) {
	for k := range cur {
		if !old[k] {
			added = append(added, k)
		}
	}
	for k := range old {
		if !cur[k] {
			removed = append(removed, k)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

// Reachable says whether traffic may go to host id: this host itself, or a
// peer whose probes are not being lost and that the control plane has not
// marked down. A peer not measured yet counts as reachable (a connect to it
// fails fast if it is not).
func (m *Member) Reachable(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return !m.lost[id]
}

// ReachablePeers is the mesh address of every peer host that is
// Reachable, has answered a probe (its WireGuard session is up) and runs
// machines (not the control plane, which serves no relay): where a
// RelayPool keeps connections warm. A peer not measured yet is left out:
// the probe of the pair's smaller key makes the first handshake
// (mesh.Node.SetPeers), and a pool dialling at the same moment from both
// sides would make both initiate, each drop the other's answer, and
// WireGuard retry only after 5 s (agents that joined together found each
// other 5–17 s late, their edges answering 502 meanwhile).
func (m *Member) ReachablePeers() []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Addr
	for _, id := range m.byKey {
		if _, measured := m.rtt[id]; !measured || m.lost[id] || m.hosts[id].Role == api.HostRoleControl {
			continue
		}
		if a, err := netip.ParseAddr(m.hosts[id].MeshAddr); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// Host is the record of host id as last read.
func (m *Member) Host(id string) (api.Host, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h, ok := m.hosts[id]
	return h, ok
}

// Hosts is every host record as last read, by id.
func (m *Member) Hosts() map[string]api.Host {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.hosts)
}

// RTT is the measured round-trip time to each reachable peer, by host id.
func (m *Member) RTT() map[string]time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.rtt)
}

// RTTOf is the measured round-trip time to host id, if there is one.
func (m *Member) RTTOf(id string) (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.rtt[id]
	return d, ok
}

// Rank orders regions nearest first by measured round-trip time (the edge's
// Nearness): a region's time is that of its nearest reachable measured host.
// Times within a millisecond are equal and keep geographic order, so that
// measurement noise on a one-machine world without simulated latency does
// not reorder regions. Regions with no measurement follow by geography.
func (m *Member) Rank(regions []string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rankLocked(regions)
}

func (m *Member) rankLocked(regions []string) []string {
	byRegion := map[string]time.Duration{}
	for id, d := range m.rtt {
		h, ok := m.hosts[id]
		if !ok || m.lost[id] {
			continue
		}
		if cur, seen := byRegion[h.Region]; !seen || d < cur {
			byRegion[h.Region] = d
		}
	}
	geoOrder := m.cfg.World.Nearest(m.cfg.Region, slices.Clone(regions))
	pos := map[string]int{}
	for i, r := range geoOrder {
		pos[r] = i
	}
	out := slices.Clone(geoOrder)
	slices.SortStableFunc(out, func(a, b string) int {
		da, oka := byRegion[a]
		db, okb := byRegion[b]
		switch {
		case a == m.cfg.Region:
			return -1
		case b == m.cfg.Region:
			return 1
		case oka && !okb:
			return -1
		case !oka && okb:
			return 1
		case oka && okb:
			if qa, qb := da.Milliseconds(), db.Milliseconds(); qa != qb {
				return int(qa - qb)
			}
		}
		return pos[a] - pos[b]
	})
	return out
}

// watchHosts calls set with the whole host list each time it changes.
func watchHosts(ctx context.Context, st *store.Store, log *slog.Logger, set func(map[string]api.Host)) {
	all := map[string]api.Host{}
	decode := func(key string, v []byte) {
		var h api.Host
		if err := json.Unmarshal(v, &h); err != nil {
			delete(all, key)
			return
		}
		all[key] = h
	}
	st.Watch(ctx, st.Hosts, log, func(c store.Change) {
		switch {
		case c.All != nil:
			all = map[string]api.Host{}
			for k, v := range c.All {
				decode(k, v)
			}
		case c.Deleted:
			delete(all, c.Key)
		default:
			decode(c.Key, c.Value)
		}
		set(maps.Clone(all))
	})
}

// Millis turns measured round trips into a host record's RTT field.
func Millis(rtt map[string]time.Duration) map[string]float64 {
	out := make(map[string]float64, len(rtt))
	for id, d := range rtt {
		out[id] = float64(d.Microseconds()) / 1000
	}
	return out
}
