package edge

import (
	"github.com/perchhq/perch/internal/anycast"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/store"
)

// hostDown is the api.Host.Status the control plane sets on a host that
// stopped heartbeating; its machines leave the rotation.
const hostDown = api.HostDown

// table is the edge's copy of the store records that routing needs. It is
// fed by watch.go (or directly by tests); commit rebuilds the Snapshot that
// the request path reads.
type table struct {
	region, hostID, domain string
	near                   Nearness
	reachable              func(hostID string) bool // nil: every host
	log                    *slog.Logger
	onCommit               func()

	mu       sync.Mutex                     // guards the maps and gen
	apps     map[string]api.App             // key: app name
	machines map[string]store.MachineSpec   // key: <app>.<id>
	status   map[string]store.MachineStatus // key: <app>.<id>
	hosts    map[string]api.Host            // key: host id
	ips      map[string]anycast.Assignment  // key: perch_ips key (anycast.go)
	gen      uint64

	// book keeps machine loads and wait queues across rebuilds (limits.go).
	book *loadBook

	snap atomic.Pointer[Snapshot]
	// changed gets a token after each commit, for the listeners.
	changed chan struct{}
}

func newTable(region, hostID, domain string, near Nearness, log *slog.Logger, onCommit func()) *table {
	t := &table{
		region: region, hostID: hostID, domain: domain, near: near, log: log, onCommit: onCommit,
		apps:     map[string]api.App{},
		machines: map[string]store.MachineSpec{},
		status:   map[string]store.MachineStatus{},
		hosts:    map[string]api.Host{},
		ips:      map[string]anycast.Assignment{},
		changed:  make(chan struct{}, 1),
		book:     newLoadBook(),
	}
	t.snap.Store(emptySnapshot())
	return t
}

// Snapshot is the current route table.
func (t *table) Snapshot() *Snapshot { return t.snap.Load() }

func (t *table) setApp(key string, a api.App) { t.mu.Lock(); t.apps[key] = a; t.mu.Unlock() }
func (t *table) removeApp(key string)         { t.mu.Lock(); delete(t.apps, key); t.mu.Unlock() }
func (t *table) setMachine(key string, m store.MachineSpec) {
	t.mu.Lock()
	t.machines[key] = m
	t.mu.Unlock()
}
func (t *table) removeMachine(key string) { t.mu.Lock(); delete(t.machines, key); t.mu.Unlock() }
func (t *table) setStatus(key string, s store.MachineStatus) {
	t.mu.Lock()
	t.status[key] = s
	t.mu.Unlock()
}
func (t *table) removeStatus(key string)        { t.mu.Lock(); delete(t.status, key); t.mu.Unlock() }
func (t *table) setHost(key string, h api.Host) { t.mu.Lock(); t.hosts[key] = h; t.mu.Unlock() }
func (t *table) removeHost(key string)          { t.mu.Lock(); delete(t.hosts, key); t.mu.Unlock() }

// clear empties the map of one bucket, before a watch reloads it.
func (t *table) clear(bucket int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch bucket {
	case bucketApps:
		clear(t.apps)
	case bucketMachines:
		clear(t.machines)
	case bucketStatus:
		clear(t.status)
	case bucketHosts:
		clear(t.hosts)
	case bucketIPs:
		clear(t.ips)
	}
}

// commit publishes a snapshot of the table as it is now.
func (t *table) commit() *Snapshot {
	t.mu.Lock()
	t.gen++
	s := t.build()
	close(t.snap.Swap(s).replaced)
	t.book.wakeWaiters() // after the swap: the woken pick from s
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
	if t.onCommit != nil {
		t.onCommit()
	}
	return s
}

// build makes a snapshot from the maps; t.mu is held.
func (t *table) build() *Snapshot {
	s := emptySnapshot()
	s.gen = t.gen
	t.book.begin()
	defer t.book.end()
	routes := make(map[string]*appRoute, len(t.apps))
	for key, a := range t.apps {
		name := a.Name
		if name == "" {
			name = key
		}
		routes[name] = &appRoute{name: name, ports: map[int]*portRoute{}, load: t.book.app(name), suspended: a.Suspended}
	}
	httpPorts := map[int]bool{}
	statics := map[string]*staticPick{}
	rank := t.rankRegions()
	// Sorted keys keep the order of equal machines stable across rebuilds.
	for _, key := range slices.Sorted(maps.Keys(t.machines)) {
		m := t.machines[key]
		ar := routes[m.App]
		if ar == nil || m.Desired == store.DesireDestroyed {
			continue
		}
		up := t.inRotation(key, &m)
		s.machines = append(s.machines, t.record(&m, up))
		t.offerStatics(statics, key, &m, up) // statics.go
		sick := !up && t.failsChecks(key, &m)
		for _, svc := range m.Config.Services {
			udp := svc.Protocol == "udp"
			for _, p := range svc.Ports {
				if p.Port < 1 || p.Port > 65535 {
					continue // the control plane validates; never bind nonsense
				}
				if udp {
					// UDP routes live beside TCP's under udpKey (udp.go):
					// never served as TCP, chosen by acquire like any.
					pr := ar.ports[udpKey(p.Port)]
					if pr == nil {
						pr = &portRoute{q: t.book.queue(m.App, udpKey(p.Port))}
						ar.ports[udpKey(p.Port)] = pr
					}
					t.addBackend(pr, key, &m, svc, up)
					continue
				}
				ch, ok := chainOf(p)
				if !ok {
					s.skipped[p.Port] = p.Handlers
					continue
				}
				httpPorts[p.Port] = true
				pr := ar.ports[p.Port]
				if pr == nil {
					pr = &portRoute{q: t.book.queue(m.App, p.Port)}
					ar.ports[p.Port] = pr
				}
				pr.offer(ch, m.UpdatedAt) // chain.go
				if sick {
					pr.unhealthy++
				}
				t.addBackend(pr, key, &m, svc, up)
			}
		}
	}
	for app, p := range statics {
		routes[app].statics = p.set()
	}
	for _, ar := range routes {
		for _, pr := range ar.ports {
			pr.order(rank)
			pr.orderSleepers(rank)
			for _, b := range pr.backends {
				b.load.addQueue(pr.q)
			}
		}
	}
	t.book.publishQueues()
	for p := range httpPorts {
		delete(s.skipped, p)
	}
	s.ports = slices.Sorted(maps.Keys(httpPorts))
	t.name(s, routes)
	s.udp = udpOwners(routes, t.domain)   // udp.go
	s.modes = portModes(routes, t.domain) // chain.go
	t.dedicatedModes(s, routes)           // anycast.go
	return s
}

// addBackend adds machine m (key) to pr for service svc: as a backend when
// it is in rotation, as one autostart may wake when it is not.
func (t *table) addBackend(pr *portRoute, key string, m *store.MachineSpec, svc api.Service, up bool) {
	if !up && svc.InternalPort > 0 && svc.AutostartOn() {
		t.addSleeper(pr, key, m) // autostart.go
	}
	if up && svc.InternalPort > 0 && !pr.has(m.ID) {
		soft, hard := limitsOf(svc.Concurrency)
		pr.backends = append(pr.backends, &Backend{
			load: t.book.machine(m.App, m.ID, m.Region, svc.InternalPort), soft: soft, hard: hard,
			Addr: net.JoinHostPort(m.PrivateIP, strconv.Itoa(svc.InternalPort)),
			Target: Target{
				App: m.App, Org: t.orgOf(m), MachineID: m.ID, HostID: m.HostID, Region: m.Region,
				Local: t.hostID != "" && m.HostID == t.hostID,
			},
		})
	}
}

// name fills s.names. When two apps claim one hostname, the first by app
// name keeps it.
func (t *table) name(s *Snapshot, routes map[string]*appRoute) {
	for _, app := range slices.Sorted(maps.Keys(routes)) {
		ar := routes[app]
		s.names[app+"."+t.domain] = ar
		for _, h := range t.apps[app].Hostnames {
			h = normalizeHost(h)
			if other, taken := s.names[h]; taken && other != ar {
				t.log.Debug("hostname claimed by two apps; keeping the first", "hostname", h, "kept", other.name, "ignored", app)
				continue
			}
			s.names[h] = ar
		}
	}
}

// inRotation says whether machine key may get requests: started, meant to
// be started, ready, on a host that is up, and with no critical health
// check (a check in its grace period is a warning and does not count);
// t.mu is held.
// failsChecks says whether a machine that would otherwise be in rotation is
// out only because a health check is critical.
func (t *table) failsChecks(key string, m *store.MachineSpec) bool {
	st, ok := t.status[key]
	return ok && st.State == api.StateStarted && m.Desired == store.DesireStarted && health.Critical(st.Checks)
}

func (t *table) inRotation(key string, m *store.MachineSpec) bool {
	st, ok := t.status[key]
	if !ok || st.State != api.StateStarted || m.Desired != store.DesireStarted || m.PrivateIP == "" || m.Cordoned {
		return false
	}
	// Ready: its checks pass or its ports listen (agent readiness.go); a
	// status of another generation is about a config since replaced.
	if !st.Ready || st.Generation != m.Generation {
		return false
	}
	if health.Critical(st.Checks) {
		return false
	}
	if st.HostID != "" && st.HostID != m.HostID {
		return false // the status is from a former placement
	}
	h, ok := t.hosts[m.HostID]
	if !ok || h.Status == hostDown {
		return false
	}
	return t.reachable == nil || m.HostID == t.hostID || t.reachable(m.HostID)
}

// record describes m for internal DNS; t.mu is held.
func (t *table) record(m *store.MachineSpec, up bool) MachineRecord {
	r := MachineRecord{App: m.App, Org: t.orgOf(m), ID: m.ID, Region: m.Region, HostID: m.HostID, Started: up}
	r.IPv4, _ = netip.ParseAddr(m.PrivateIP)
	if sub, err := netip.ParsePrefix(t.hosts[m.HostID].Subnet6); err == nil && r.IPv4.Is4() {
		r.Addr6 = mesh.MachineAddr(r.Org, sub, r.IPv4)
	}
	return r
}

// orgOf is m's organisation: its spec's, or for a spec written before
// specs carried it, its app's. t.mu is held.
func (t *table) orgOf(m *store.MachineSpec) string {
	if m.Org != "" {
		return m.Org
	}
	return t.apps[m.App].Org
}

// rankRegions gives every region with a machine its rank from this edge:
// 0 for its own, then the Nearness order, then regions it does not know.
func (t *table) rankRegions() map[string]int {
	others := map[string]bool{}
	for _, m := range t.machines {
		if m.Region != t.region {
			others[m.Region] = true
		}
	}
	rank := map[string]int{t.region: 0}
	for _, r := range t.near.Rank(slices.Sorted(maps.Keys(others))) {
		if _, seen := rank[r]; !seen && others[r] {
			rank[r] = len(rank)
		}
	}
	for _, r := range slices.Sorted(maps.Keys(others)) {
		if _, seen := rank[r]; !seen {
			rank[r] = len(rank)
		}
	}
	return rank
}

func (r *portRoute) has(id string) bool {
	for _, b := range r.backends {
		if b.Target.MachineID == id {
			return true
		}
	}
	return false
}

// order sorts the backends by region rank (stable: machine keys were
// visited in order) and marks where each region's run ends.
func (r *portRoute) order(rank map[string]int) {
	slices.SortStableFunc(r.backends, func(a, b *Backend) int {
		return rank[a.Target.Region] - rank[b.Target.Region]
	})
	r.ends = r.ends[:0]
	for i := 1; i <= len(r.backends); i++ {
		if i == len(r.backends) || r.backends[i].Target.Region != r.backends[i-1].Target.Region {
			r.ends = append(r.ends, i)
		}
	}
}
