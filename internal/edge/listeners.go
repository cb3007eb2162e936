package edge

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// listeners keeps one listener open per public port of the current
// snapshot, on the edge's address.
type listeners struct {
	e  *Edge
	wg sync.WaitGroup // accept loops, HTTP servers, connections, drains
	// workers run the connections' goroutines (workers.go), in wg.
	workers connWorkers

	mu   sync.Mutex // guards open, udp and dedicated
	open map[int]*portServer
	udp  map[int]*udpServer // public UDP ports (udp.go)
	// dedicated are the ports of apps' own anycast addresses (anycast.go).
	dedicated map[netip.AddrPort]*portServer
	// dedicatedUDP are the UDP ports of apps' own anycast addresses.
	dedicatedUDP map[netip.AddrPort]*udpServer

	// skipped and failing remember which unserved ports and which ports
	// that could not be bound were already logged, to log them once.
	skipped, failing map[int]bool
	// settled: the listeners of the first complete table are open, and
	// Sockets was told so.
	settled bool
}

// portServer is one public port: its listener, the HTTP server its HTTP
// connections are handed to, and the connections the edge handles itself
// (raw TCP, and those whose first bytes it is reading).
type portServer struct {
	// ctx ends when the edge stops: connections waiting for a machine
	// give up then.
	ctx  context.Context
	port int
	// app and addr are set on an app's own anycast address: the port
	// serves that app alone (anycast.go).
	app   string
	addr  netip.AddrPort
	ln    net.Listener
	srv   *http.Server
	q     *connQueue
	conns connSet
}

func newListeners(e *Edge) *listeners {
	l := &listeners{e: e, open: map[int]*portServer{}, udp: map[int]*udpServer{}, dedicated: map[netip.AddrPort]*portServer{}, dedicatedUDP: map[netip.AddrPort]*udpServer{}, skipped: map[int]bool{}, failing: map[int]bool{}}
	l.workers.wg = &l.wg
	return l
}

// bindRetry is how often ports that could not be bound are tried again
// when the routes do not change meanwhile.
const bindRetry = 5 * time.Second

// drainTimeout is how long connections of a port that went away may go on.
const drainTimeout = 10 * time.Second

// run syncs the listeners with every new snapshot until ctx is done, then
// closes them all.
func (l *listeners) run(ctx context.Context) {
	if !l.e.cfg.Addr.IsValid() {
		<-ctx.Done()
		return
	}
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			l.closeAll()
			l.workers.close()
			l.wg.Wait()
			return
		case <-l.e.table.changed:
		case <-retry.C:
		}
		if l.sync(ctx, l.e.table.Snapshot()) {
			retry.Reset(bindRetry)
		}
	}
}

// sync opens the ports s needs and drains those it no longer has. A port
// that cannot be bound is logged and tried again later; sync says whether
// one failed.
func (l *listeners) sync(ctx context.Context, s *Snapshot) (failed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := map[int]bool{}
	for _, p := range s.ports {
		want[p] = true
		if l.open[p] != nil {
			continue
		}
		ps, err := l.listen(ctx, p)
		if err != nil {
			failed = true
			level := slog.LevelError
			if l.failing[p] {
				level = slog.LevelDebug
			}
			l.failing[p] = true
			l.e.log.Log(ctx, level, "cannot listen on public port; will retry", "port", p, "err", err)
			continue
		}
		delete(l.failing, p)
		l.open[p] = ps
		l.e.log.Info("listening", "addr", ps.ln.Addr().String())
	}
	for p := range l.failing {
		if !want[p] {
			delete(l.failing, p)
		}
	}
	if l.syncUDP(ctx, s) {
		failed = true
	}
	if l.syncDedicated(ctx, s) {
		failed = true
	}
	if l.syncDedicatedUDP(ctx, s) {
		failed = true
	}
	for p, ps := range l.open {
		if !want[p] {
			delete(l.open, p)
			l.e.log.Info("closing public port: no app serves it any more", "port", p)
			if so := l.e.cfg.Sockets; so != nil {
				so.Release("tcp", ps.ln.Addr().String())
			}
			l.wg.Go(func() { ps.drain(ctx) })
		}
	}
	if so := l.e.cfg.Sockets; so != nil && !l.settled && l.tableComplete() {
		l.settled = true
		so.ReleaseUnused()
	}
	seen := map[int]bool{}
	for p, h := range s.skipped {
		seen[p] = true
		if !l.skipped[p] {
			l.e.log.Warn("public port not served: its handlers are not a chain the edge serves", "port", p, "handlers", h)
		}
	}
	l.skipped = seen
	return failed
}

func (l *listeners) listen(ctx context.Context, port int) (*portServer, error) {
	addr := netip.AddrPortFrom(l.e.cfg.Addr, uint16(port)).String()
	listen := net.Listen
	if so := l.e.cfg.Sockets; so != nil {
		listen = so.Listen
	}
	ln, err := listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ln = l.e.guardListener(ln) // defences.go
	ps := &portServer{ctx: ctx, port: port, ln: ln, q: newConnQueue(ln.Addr()), srv: l.e.newHTTPServer(port)}
	l.wg.Go(func() {
		if err := ps.srv.Serve(ps.q); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.e.log.Error("public port stopped serving HTTP", "port", port, "err", err)
		}
	})
	l.wg.Go(func() { l.accept(ps) })
	return ps, nil
}

// newHTTPServer is the HTTP server of a public port: HTTP/1.1, HTTP/2 over
// TLS (ALPN h2) and HTTP/2 with prior knowledge in the clear (h2c), so that
// gRPC clients work with and without TLS.
func (e *Edge) newHTTPServer(port int) *http.Server {
	var h http.Handler = e.Handler(port)
	if e.cfg.Certs != nil {
		h = e.cfg.Certs.HTTPChallenge(h)
	}
	protos := new(http.Protocols)
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:     withTLSState(h), // guard.go
		ConnContext: guardConnContext,
		Protocols:   protos,
		ErrorLog:    slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
	}
	e.configureServer(srv) // timeouts and header limits, defences.go
	return srv
}

// accept takes the port's connections until its listener closes.
func (l *listeners) accept(ps *portServer) {
	var backoff time.Duration
	for {
		c, err := ps.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.e.log.Warn("accept failed; retrying", "port", ps.port, "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		l.e.dispatch(&l.workers, ps, c)
	}
}

// drain lets the connections of a port that went away finish, unless the
// edge stops first or they take longer than drainTimeout.
func (ps *portServer) drain(ctx context.Context) {
	ps.ln.Close()
	ctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	if ps.srv.Shutdown(ctx) != nil {
		ps.srv.Close()
	}
	ps.conns.wait(ctx)
	ps.conns.closeAll()
}

// tableComplete says whether the route table was built from every bucket.
func (l *listeners) tableComplete() bool {
	select {
	case <-l.e.ready:
		return true
	default:
		return false
	}
}

func (l *listeners) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, u := range l.udp {
		u.close()
		delete(l.udp, p)
	}
	for p, ps := range l.open {
		ps.ln.Close()
		ps.srv.Close()
		ps.conns.closeAll()
		delete(l.open, p)
	}
	for a, u := range l.dedicatedUDP {
		u.close()
		delete(l.dedicatedUDP, a)
	}
	for a, ps := range l.dedicated {
		ps.ln.Close()
		ps.srv.Close()
		ps.conns.closeAll()
		delete(l.dedicated, a)
	}
}

// syncUDP opens the UDP ports s serves and closes those it no longer has
// (their flows end); l.mu is held. It says whether a port failed to bind.
func (l *listeners) syncUDP(ctx context.Context, s *Snapshot) (failed bool) {
	for p := range s.udp {
		if l.udp[p] != nil {
			continue
		}
		u, err := l.listenUDP(ctx, p)
		if err != nil {
			failed = true
			l.e.log.Error("cannot listen on public UDP port; will retry", "port", p, "err", err)
			continue
		}
		l.udp[p] = u
		l.e.log.Info("listening", "addr", u.pc.LocalAddr().String()+"/udp")
	}
	for p, u := range l.udp {
		if _, ok := s.udp[p]; !ok {
			delete(l.udp, p)
			l.e.log.Info("closing public UDP port: no app serves it any more", "port", p)
			l.wg.Go(u.close)
		}
	}
	return failed
}

// udpPorts is the public UDP ports open now.
func (l *listeners) udpPorts() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.udp))
}

func (l *listeners) ports() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.open))
}

// connQueue is the listener of a port's HTTP server: the edge hands it the
// connections it has decided are HTTP.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c to the HTTP server, or closes it if the server is gone.
func (q *connQueue) push(c net.Conn) {
	select {
	case q.ch <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// connSet tracks the connections the edge handles outside the HTTP server,
// to close them when the port goes or the edge stops.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// add tracks c; it says false (and closes c) once the set is closed.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	if s.m == nil {
		s.m = map[net.Conn]struct{}{}
	}
	s.m[c] = struct{}{}
	return true
}

func (s *connSet) remove(c net.Conn) {
	s.mu.Lock()
	delete(s.m, c)
	s.mu.Unlock()
}

func (s *connSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// wait returns when no connection is left or ctx is done.
func (s *connSet) wait(ctx context.Context) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for s.len() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
	clear(s.m)
}

// syncDedicated opens a listener on each port of each app's own address
// and drains those no longer wanted; l.mu is held.
func (l *listeners) syncDedicated(ctx context.Context, s *Snapshot) (failed bool) {
	for a, d := range s.dedicated {
		if ps := l.dedicated[a]; ps != nil && ps.app == d.app {
			continue
		} else if ps != nil { // the address went to another app
			delete(l.dedicated, a)
			l.wg.Go(func() { ps.drain(ctx) })
		}
		ln, err := listenFree(ctx, a)
		if err != nil {
			failed = true
			l.e.log.Error("cannot listen on an app's anycast address; will retry", "addr", a.String(), "app", d.app, "err", err)
			continue
		}
		ln = l.e.guardListener(ln)
		srv := l.e.newHTTPServer(int(a.Port()))
		if d.app != "" {
			srv.Handler = l.e.appHandler(int(a.Port()), d.app)
		}
		ps := &portServer{ctx: ctx, port: int(a.Port()), app: d.app, addr: a, ln: ln, q: newConnQueue(ln.Addr()), srv: srv}
		l.wg.Go(func() {
			if err := ps.srv.Serve(ps.q); err != nil && !errors.Is(err, http.ErrServerClosed) {
				l.e.log.Error("anycast address stopped serving HTTP", "addr", a.String(), "err", err)
			}
		})
		l.wg.Go(func() { l.accept(ps) })
		l.dedicated[a] = ps
		l.e.log.Info("listening", "addr", a.String(), "app", d.app)
	}
	for a, ps := range l.dedicated {
		if _, ok := s.dedicated[a]; !ok {
			delete(l.dedicated, a)
			l.e.log.Info("closing an app's anycast port", "addr", a.String(), "app", ps.app)
			l.wg.Go(func() { ps.drain(ctx) })
		}
	}
	return failed
}

// syncDedicatedUDP opens each UDP port of each app's own address and
// closes those no longer wanted (their flows end); l.mu is held. The
// app is looked up per flow, so an address that went to another app
// keeps its socket.
func (l *listeners) syncDedicatedUDP(ctx context.Context, s *Snapshot) (failed bool) {
	for a, host := range s.dedicatedUDP {
		if l.dedicatedUDP[a] != nil {
			continue
		}
		pc, err := listenFreeUDP(ctx, a)
		if err != nil {
			failed = true
			l.e.log.Error("cannot listen on an app's anycast address; will retry", "addr", a.String()+"/udp", "app", host, "err", err)
			continue
		}
		l.dedicatedUDP[a] = l.serveUDP(ctx, pc, int(a.Port()), a)
		l.e.log.Info("listening", "addr", a.String()+"/udp", "app", host)
	}
	for a, u := range l.dedicatedUDP {
		if _, ok := s.dedicatedUDP[a]; !ok {
			delete(l.dedicatedUDP, a)
			l.e.log.Info("closing an app's anycast UDP port", "addr", a.String()+"/udp")
			l.wg.Go(u.close)
		}
	}
	return failed
}

// dedicatedUDPAddrs is the UDP ports of apps' own addresses open now.
func (l *listeners) dedicatedUDPAddrs() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.SortedFunc(maps.Keys(l.dedicatedUDP), netip.AddrPort.Compare)
}

// Dedicated is the app-address ports the edge listens on, sorted.
func (l *listeners) dedicatedAddrs() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.SortedFunc(maps.Keys(l.dedicated), netip.AddrPort.Compare)
}
