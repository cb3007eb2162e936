package edge

import (
	"crypto/tls"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// A public port's handlers, as in Fly's services.ports[].handlers, say what
// the edge does with each connection: "tls" terminates TLS, "http" serves
// HTTP requests (HTTP/1.1 and HTTP/2 from clients, HTTP/1.1 or h2c to the
// machine), "proxy_proto" sends the machine a PROXY protocol header before
// the client's bytes; no handler at all is raw TCP, byte for byte. Order
// does not matter: TLS is always outermost. "http" with "proxy_proto" is
// not a chain (pooled HTTP connections carry no per-client header), nor are
// handlers the edge does not know (Fly's "pg_tls"); ports with those are
// left closed and logged, not half-served.
//
// Several apps share every port of the edge's address. Each connection is
// routed before any handler runs: by the TLS server name (SNI, read from
// the ClientHello without consuming it) to a "tls" app or to a passthrough
// app, whose own certificate then reaches the client; by the Host header
// among "http" apps; and a raw TCP port belongs to one app, which gets the
// connections no other app claims (the API refuses a second one).

// chain is what one app's public port does with a connection.
type chain struct {
	tls        bool // terminate TLS
	http       bool // serve HTTP requests
	proxyProto int  // PROXY protocol version to send the machine; 0 for none
	forceHTTPS bool // answer plain HTTP requests with a redirect to https
	h2Backend  bool // speak h2c to the machine
	// alpn, minTLS and maxTLS tune termination.
	alpn           []string
	minTLS, maxTLS uint16
}

// passthrough says whether the machine gets the client's bytes untouched,
// TLS included: the SNI of a ClientHello can pick it, and it cannot share a
// port with plain HTTP.
func (c *chain) passthrough() bool { return !c.tls && !c.http }

// chainOf reads a port's handlers and options. ok is false for a chain the
// edge does not serve.
func chainOf(p api.Port) (c *chain, ok bool) {
	c = &chain{forceHTTPS: p.ForceHTTPS, minTLS: tls.VersionTLS12, maxTLS: tls.VersionTLS13}
	for _, h := range p.Handlers {
		switch strings.ToLower(h) {
		case "tls":
			c.tls = true
		case "http":
			c.http = true
		case "proxy_proto":
			c.proxyProto = 1
			if o := p.ProxyProtoOptions; o != nil && o.Version == "v2" {
				c.proxyProto = 2
			}
		default:
			return nil, false
		}
	}
	if c.http && c.proxyProto != 0 {
		return nil, false
	}
	if o := p.HTTPOptions; o != nil {
		c.h2Backend = o.H2Backend
	}
	if c.http {
		c.alpn = defaultHTTPALPN
	}
	if o := p.TLSOptions; o != nil {
		if len(o.ALPN) > 0 {
			c.alpn = slices.Clone(o.ALPN)
		}
		if len(o.Versions) > 0 {
			c.minTLS, c.maxTLS = 0, 0
			for _, v := range o.Versions {
				n, known := tlsVersions[v]
				if !known {
					return nil, false
				}
				if c.minTLS == 0 || n < c.minTLS {
					c.minTLS = n
				}
				c.maxTLS = max(c.maxTLS, n)
			}
		}
	}
	return c, true
}

// portMode is how a public port's listener treats a new connection, from
// the chains of every app on the port.
type portMode struct {
	// raw is the route of the app that owns raw TCP on the port: it gets
	// plain (non-TLS) connections and TLS ones no other app's name claims.
	raw *portRoute
	// rawHost is the raw app's key in Snapshot.names.
	rawHost string
	plain   bool // some app serves plain HTTP on the port
	tls     bool // some app terminates TLS on the port
	// peek is set when the port's connections must be looked at first:
	// unless one raw app or only plain HTTP apps use it.
	peek bool
}

// modeOf sums up the chains of a port's apps (app name -> route); apps
// are known as <name>.<domain>.
func modeOf(apps map[string]*portRoute, domain string) *portMode {
	m := &portMode{}
	raws := 0
	for _, name := range sortedKeys(apps) {
		pr := apps[name]
		switch {
		case pr.chain.passthrough():
			raws++
			if m.raw == nil {
				m.raw, m.rawHost = pr, name+"."+domain
			}
		case pr.chain.tls:
			m.tls = true
		default:
			m.plain = true
		}
	}
	onlyRaw := raws == 1 && !m.tls && !m.plain
	onlyPlain := raws == 0 && !m.tls
	m.peek = !onlyRaw && !onlyPlain
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// offer sets the route's chain from a machine's config updated at at; the
// newest config wins, so a deploy that changes handlers takes effect as
// soon as its first machine is updated.
func (r *portRoute) offer(c *chain, at time.Time) {
	if r.chain == nil || at.After(r.chainAt) {
		r.chain, r.chainAt = c, at
	}
}

// portModes sums up every served port.
func portModes(routes map[string]*appRoute, domain string) map[int]*portMode {
	byPort := map[int]map[string]*portRoute{}
	for name, ar := range routes {
		for p, pr := range ar.ports {
			if isUDPKey(p) {
				continue // UDP has no handlers (udp.go)
			}
			if byPort[p] == nil {
				byPort[p] = map[string]*portRoute{}
			}
			byPort[p][name] = pr
		}
	}
	modes := make(map[int]*portMode, len(byPort))
	for p, apps := range byPort {
		modes[p] = modeOf(apps, domain)
	}
	return modes
}
