package edge

import (
	"strings"
	"sync/atomic"
)

// Snapshot is one immutable version of the route table. The request path
// loads the current one through an atomic pointer and reads nothing else.
type Snapshot struct {
	gen uint64
	// names maps every lower-case host name an app answers to
	// (<app>.<domain> and its custom hostnames) to the app's routes.
	names map[string]*appRoute
	// ports are the public ports served as plain HTTP, sorted.
	ports []int
	// skipped are public ports declared only with handler chains this edge
	// does not serve yet, with the handlers of one of them.
	skipped map[int][]string
}

type appRoute struct {
	name  string
	ports map[int]*portRoute
}

// portRoute holds the machines of one app that can answer on one public
// port, in order of preference.
type portRoute struct {
	// backends are ordered by region rank (own region first), then machine id.
	backends []*Backend
	// first is how many backends share the best region; requests rotate
	// among them.
	first int
	next  atomic.Uint32
}

// Backend is a machine ready to answer on some public port.
type Backend struct {
	// Addr is the machine's private IP and the service's internal port.
	Addr   string
	Target Target
}

func emptySnapshot() *Snapshot {
	return &Snapshot{names: map[string]*appRoute{}, skipped: map[int][]string{}}
}

// Generation counts the table's rebuilds; it grows with every change.
func (s *Snapshot) Generation() uint64 { return s.gen }

// Ports is the public ports the edge serves as HTTP, sorted.
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
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h[i:], ']') < 0 {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	return strings.ToLower(h)
}
