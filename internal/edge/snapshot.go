package edge

import (
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
)

// Snapshot is one immutable version of the route table. The request path
// loads the current one through an atomic pointer and reads nothing else.
type Snapshot struct {
	gen uint64
	// replaced is closed once a newer snapshot is published: a request
	// held for a machine to start (autostart.go) waits on it.
	replaced chan struct{}
	// names maps every lower-case host name an app answers to
	// (<app>.<domain> and its custom hostnames) to the app's routes.
	names map[string]*appRoute
	// ports are the public ports the edge listens on, sorted.
	ports []int
	// modes say how each port's listener treats a new connection.
	modes map[int]*portMode
	// machines is every machine the table knows, for internal DNS.
	machines []MachineRecord
	// skipped are public ports declared only with handler chains this edge
	// does not serve, with the handlers of one of them.
	skipped map[int][]string
	// udp maps each public UDP port to the key in names of the app that
	// owns it (udp.go).
	udp map[int]string
	// dedicated are the ports of apps' own anycast addresses (anycast.go).
	dedicated map[netip.AddrPort]dedicatedPort
	// dedicatedUDP are the UDP ports of apps' own anycast addresses: the
	// app's host name (anycast.go).
	dedicatedUDP map[netip.AddrPort]string
}

type appRoute struct {
	name  string
	ports map[int]*portRoute
	load  *appLoad // requests in flight for the app, across rebuilds
	// suspended is set while the app is suspended at its budget (budget.go).
	suspended *suspension
	// statics are served by the edge itself (statics.go); nil if none.
	statics *staticSet
}

// portRoute holds the machines of one app that can answer on one public
// port, in order of preference.
type portRoute struct {
	// chain is what the port does with a connection (chain.go), from the
	// most recently updated machine's config; chainAt is that update.
	chain   *chain
	chainAt time.Time
	// backends are ordered by region rank (own region first), then machine id.
	backends []*Backend
	// ends are where each region's run of backends ends: backends[0:ends[0]]
	// are in the nearest region, and so on.
	ends []int
	// next rotates the start among equally loaded machines.
	next atomic.Uint32
	// q holds requests waiting for a slot when every machine is at its hard
	// limit; it outlives rebuilds.
	q *waitQueue
	// unhealthy counts started machines kept out for a critical health
	// check, so that a 502 can say why there is no machine.
	unhealthy int
	// sleepers are the stopped and suspended machines with autostart that
	// a request may start when no backend takes it, nearest first; waking
	// counts machines with autostart meant to be started and not ready
	// yet (autostart.go).
	sleepers []sleeper
	waking   int
}

// Backend is a machine ready to answer on some public port.
type Backend struct {
	// Addr is the machine's private IP and the service's internal port.
	Addr   string
	Target Target

	// load is what the edge has in flight to the machine's service; soft
	// and hard its [services.concurrency] limits (noLimit if unset).
	load       *load
	soft, hard int32
}

func emptySnapshot() *Snapshot {
	return &Snapshot{names: map[string]*appRoute{}, modes: map[int]*portMode{}, skipped: map[int][]string{}, udp: map[int]string{}, dedicated: map[netip.AddrPort]dedicatedPort{}, dedicatedUDP: map[netip.AddrPort]string{}, replaced: make(chan struct{})}
}

// Generation counts the table's rebuilds; it grows with every change.
func (s *Snapshot) Generation() uint64 { return s.gen }

// Ports is the public ports the edge serves, sorted.
func (s *Snapshot) Ports() []int { return append([]int(nil), s.ports...) }

// Candidates is the machines a request for host on public port would go
// to, most preferred first (before round-robin among the nearest).
func (s *Snapshot) Candidates(host string, port int) []Backend {
	a := s.names[normalizeHost(host)]
	if a == nil || a.ports[port] == nil {
		return nil
	}
	var out []Backend
	for _, b := range a.ports[port].backends {
		out = append(out, *b)
	}
	return out
}

// normalizeHost turns a Host header into a key of Snapshot.names: no port,
// no trailing dot, lower case. It does not allocate for the common
// already-lower-case name.
func normalizeHost(h string) string {
	// A port is stripped only where net.SplitHostPort sees one: a Host
	// such as "app.perch.local:[" is malformed and names no app.
	if strings.IndexByte(h, ':') >= 0 {
		if name, _, err := net.SplitHostPort(h); err == nil {
			h = name
		}
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h)
}

// MachineRecord is a machine as internal DNS needs it.
type MachineRecord struct {
	App, Org, ID, Region, HostID string
	// IPv4 is the machine's address on its host's bridge; Addr6 its
	// private IPv6 address (6PN), invalid if its host has no /64.
	IPv4, Addr6 netip.Addr
	// Started is true for a machine in rotation: started, meant to be,
	// on a host that is up and reachable.
	Started bool
}

// Machines is every machine the table knows that is not destroyed.
func (s *Snapshot) Machines() []MachineRecord { return s.machines }
