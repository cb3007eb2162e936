package edge

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Limits protect the edge from slow and greedy clients. A zero field takes
// its default (DefaultLimits); a negative one turns that limit off.
// docs/edge.md explains each to users.
type Limits struct {
	// ReadHeaderTimeout bounds the time a client has to send a request's
	// headers: a slowloris client is cut off after it.
	ReadHeaderTimeout time.Duration
	// MaxHeaderBytes bounds the size of a request's headers (and request
	// line); a larger request gets 431.
	MaxHeaderBytes int
	// IdleTimeout closes a client's keep-alive connection that has carried
	// no request for this long.
	IdleTimeout time.Duration
	// BackendIdleTimeout closes the edge's pooled connections to machines
	// that stayed idle this long. It must be shorter than the apps' own
	// keep-alive timeouts (gunicorn's is 2 s, Node's 5 s): a connection the
	// app closes at the moment the edge sends a request on it resets that
	// request, and a POST that may have reached the app is not sent again.
	BackendIdleTimeout time.Duration
	// MaxConnsPerClient caps the connections one client address holds open
	// to the edge at once, over all ports; further ones are closed at once.
	MaxConnsPerClient int
	// MaxConnsPerApp caps what one app has in flight at this edge:
	// requests on HTTP ports (each holds a connection), connections on raw
	// TCP ports. Beyond it a request gets 503.
	MaxConnsPerApp int
	// QueueTimeout is how long a request waits for a slot when every
	// machine is at its hard limit, before a 503 with Retry-After.
	QueueTimeout time.Duration
	// MaxQueued caps the requests waiting for a slot per app and port;
	// beyond it a request gets 503 at once.
	MaxQueued int
	// BodyTimeout bounds a pause in a request body, and is the grace
	// before BodyMinRate applies; a body that breaks either gets 408
	// (body.go).
	BodyTimeout time.Duration
	// BodyMinRate is the average rate, in bytes per second, a request
	// body must keep after BodyTimeout.
	BodyMinRate int
	// BodyBufferBytes is the largest body (of known length) the edge reads
	// whole before the request takes a machine slot.
	BodyBufferBytes int
	// MaxUploadsPerClient caps the requests of one client address whose
	// bodies are streaming to machines at once; beyond it a request gets
	// 429. So does a request past half an app's slots (body.go); a
	// negative value turns both caps off.
	MaxUploadsPerClient int
	// StartTimeout is how long a request for an app whose machines are
	// all stopped is held while the edge starts one (autostart.go),
	// before a 503 saying why.
	StartTimeout time.Duration
	// SendTimeout bounds how long one write of an answer to a client may
	// wait for the client to read (nginx's send_timeout): a client that
	// stops reading is cut off after it, and the machine's connection and
	// slot with it. A stream that keeps being read is never cut.
	SendTimeout time.Duration
}

// DefaultLimits are the limits of an edge whose Config leaves them zero.
var DefaultLimits = Limits{
	ReadHeaderTimeout:  10 * time.Second,
	MaxHeaderBytes:     64 << 10,
	IdleTimeout:        60 * time.Second,
	BackendIdleTimeout: time.Second,
	MaxConnsPerClient:  256,
	MaxConnsPerApp:     10000,
	QueueTimeout:       5 * time.Second,
	MaxQueued:          1000,
	StartTimeout:       30 * time.Second,
	SendTimeout:        60 * time.Second,
	// Apache mod_reqtimeout's default (body=20,MinRate=500).
	BodyTimeout:         20 * time.Second,
	BodyMinRate:         500,
	BodyBufferBytes:     64 << 10,
	MaxUploadsPerClient: 8,
}

// withDefaults fills zero fields from DefaultLimits; negative ones mean no
// limit and become 0 (durations) or a huge count.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	dur := func(v *time.Duration, def time.Duration) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = 0
		}
	}
	count := func(v *int, def int) {
		switch {
		case *v == 0:
			*v = def
		case *v < 0:
			*v = noLimit
		}
	}
	dur(&l.ReadHeaderTimeout, d.ReadHeaderTimeout)
	dur(&l.IdleTimeout, d.IdleTimeout)
	dur(&l.BackendIdleTimeout, d.BackendIdleTimeout)
	dur(&l.QueueTimeout, d.QueueTimeout)
	dur(&l.StartTimeout, d.StartTimeout)
	dur(&l.BodyTimeout, d.BodyTimeout)
	dur(&l.SendTimeout, d.SendTimeout)
	count(&l.MaxHeaderBytes, d.MaxHeaderBytes)
	count(&l.MaxConnsPerClient, d.MaxConnsPerClient)
	count(&l.MaxConnsPerApp, d.MaxConnsPerApp)
	count(&l.MaxQueued, d.MaxQueued)
	count(&l.BodyMinRate, d.BodyMinRate)
	count(&l.MaxUploadsPerClient, d.MaxUploadsPerClient)
	switch { // a negative buffer means none: every body streams
	case l.BodyBufferBytes == 0:
		l.BodyBufferBytes = d.BodyBufferBytes
	case l.BodyBufferBytes < 0:
		l.BodyBufferBytes = 0
	}
	if l.BodyMinRate == noLimit {
		l.BodyMinRate = 0 // no rate
	}
	return l
}

// configureServer applies the limits to a public port's HTTP server.
func (e *Edge) configureServer(srv *http.Server) {
	srv.ReadHeaderTimeout = e.limits.ReadHeaderTimeout
	srv.MaxHeaderBytes = e.limits.MaxHeaderBytes
	srv.IdleTimeout = e.limits.IdleTimeout
	if srv.IdleTimeout == 0 {
		// Without it net/http would fall back to ReadTimeout; keep
		// "no limit" meaning no limit.
		srv.IdleTimeout = -1
	}
}

// admit counts the request in for its app, or answers 503 when the app is
// at its cap on this edge; finish counts it out.
func (e *Edge) admit(w http.ResponseWriter, app *appRoute, st *reqState) bool {
	if app.load.active.Add(1) > int32(min(e.limits.MaxConnsPerApp, noLimit)) {
		app.load.active.Add(-1)
		e.metrics.rejected.WithLabelValues("app_cap").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("perch: app %q has %d requests in flight at this edge, its cap; try again shortly.",
			app.name, e.limits.MaxConnsPerApp), http.StatusServiceUnavailable)
		return false
	}
	st.appLoad = app.load
	return true
}

// guardListener wraps a public port's listener: it closes at once the
// connections of a client address that already holds MaxConnsPerClient,
// and counts open connections for the metrics. One clientConns is shared
// by every port of the edge.
func (e *Edge) guardListener(ln net.Listener) net.Listener {
	return &guardedListener{Listener: ln, e: e}
}

type guardedListener struct {
	net.Listener
	e *Edge
}

// clientConns counts open connections per client address.
type clientConns struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := remoteIP(c)
		cc := &l.e.clients
		cc.mu.Lock()
		if cc.n[ip] >= l.e.limits.MaxConnsPerClient {
			cc.mu.Unlock()
			c.Close()
			l.e.metrics.rejected.WithLabelValues("client_cap").Inc()
			l.e.log.Debug("connection refused: client address at its connection cap", "client", ip, "cap", l.e.limits.MaxConnsPerClient)
			continue
		}
		cc.n[ip]++
		cc.mu.Unlock()
		l.e.metrics.clientConns.Inc()
		return &guardedConn{Conn: c, e: l.e, ip: ip}, nil
	}
}

func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr().Unmap()
}

type guardedConn struct {
	net.Conn
	e    *Edge
	ip   netip.Addr
	once sync.Once
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		cc := &c.e.clients
		cc.mu.Lock()
		if cc.n[c.ip]--; cc.n[c.ip] <= 0 {
			delete(cc.n, c.ip)
		}
		cc.mu.Unlock()
		c.e.metrics.clientConns.Dec()
	})
	return c.Conn.Close()
}

// CloseWrite half-closes the connection, for raw TCP proxying.
func (c *guardedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ReadFrom and WriteTo keep the kernel's splice for raw TCP copies.
func (c *guardedConn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(c.Conn, r) }
func (c *guardedConn) WriteTo(w io.Writer) (int64, error)  { return io.Copy(w, c.Conn) }

// NetConn is the accepted connection.
func (c *guardedConn) NetConn() net.Conn { return c.Conn }
