package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A RelayPool keeps TCP connections to other hosts' relays open ahead of
// need, so that a request to a machine on another host costs one mesh
// round trip: the relay request line and the request leave together on a
// connection that is already up, and the answer is the next packet back.
//
// Idle cost: PoolPerHost connections per warmed peer (a netstack
// endpoint and a goroutine blocked in Read each), replaced every
// PoolMaxAge (RelayIdle/2) so the far relay never times one out; no
// packets while idle beyond that replacement.
//
// A pooled connection can be dead: the far relay closed it (its idle
// limit, its host stopping), which the watcher sees at once (the relay
// never sends before the request line, so any Read result means the end),
// or the far host's agent restarted with a new netstack that knows
// nothing of it, which nothing shows until a segment is sent: the request
// then meets a reset. Dial's connection keeps what was written to it until
// the relay's first answer byte, and replays it on a new connection when
// the pooled one ends before that byte (see replayable for why
// that is safe).
type RelayPool struct {
	n      *Node
	maxAge time.Duration // PoolMaxAge; tests shorten it

	mu     sync.Mutex
	hosts  map[netip.Addr]*poolHost
	closed bool
	wg     sync.WaitGroup
	// replays counts requests sent again after a pooled connection
	// turned out dead.
	replays atomic.Int64
	ctx     context.Context
	cancel  context.CancelFunc
}

// PoolPerHost is how many idle connections a RelayPool keeps to each
// warmed host's relay.
const PoolPerHost = 1

// PoolMaxAge is how long a pooled connection is kept idle before it is
// replaced: well inside RelayIdle, after which the relay drops it.
const PoolMaxAge = RelayIdle / 2

// replayMax bounds what a pooled connection keeps for a replay: a request
// larger than this that meets a dead connection fails with
// ErrRelayNotForwarded instead (the edge sends it elsewhere).
const replayMax = 64 << 10

// ErrRelayNotForwarded is returned by the first Read of a pooled
// connection that ended before the relay's answer and could not be
// replayed: nothing written to it reached any machine.
var ErrRelayNotForwarded = errors.New("mesh: relay connection ended before its answer; nothing was forwarded")

type poolHost struct {
	idle    []*idleConn
	filling int
	failing int // consecutive failed connects, for the backoff
}

// idleConn is a pooled connection and its watcher.
type idleConn struct {
	c    net.Conn
	done chan struct{} // closed when the watcher's Read returned
	n    int
	err  error
	age  *time.Timer
}

// NewRelayPool starts an empty pool dialling through n; Warm fills it.
func NewRelayPool(n *Node) *RelayPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &RelayPool{n: n, maxAge: PoolMaxAge, hosts: map[netip.Addr]*poolHost{}, ctx: ctx, cancel: cancel}
}

// Warm keeps connections open to the relays of exactly these hosts (mesh
// addresses): new ones are filled in the background, others' dropped.
func (p *RelayPool) Warm(hosts []netip.Addr) {
	want := map[netip.Addr]bool{}
	for _, h := range hosts {
		want[h] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for h := range p.hosts {
		if !want[h] {
			p.dropLocked(h)
		}
	}
	for h := range want {
		if p.hosts[h] == nil {
			p.hosts[h] = &poolHost{}
			p.fillLocked(h)
		}
	}
}

// Drop closes the pooled connections to host and stops keeping any.
func (p *RelayPool) Drop(host netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dropLocked(host)
}

func (p *RelayPool) dropLocked(host netip.Addr) {
	ph := p.hosts[host]
	if ph == nil {
		return
	}
	delete(p.hosts, host)
	for _, ic := range ph.idle {
		ic.age.Stop()
		ic.c.Close()
	}
}

// Idle is how many idle connections the pool holds to host.
func (p *RelayPool) Idle(host netip.Addr) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ph := p.hosts[host]; ph != nil {
		return len(ph.idle)
	}
	return 0
}

// Close closes every pooled connection and waits for the pool's
// goroutines.
func (p *RelayPool) Close() {
	p.mu.Lock()
	p.closed = true
	for h := range p.hosts {
		p.dropLocked(h)
	}
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

// fillLocked starts connects until host has PoolPerHost connections idle
// or on their way.
func (p *RelayPool) fillLocked(host netip.Addr) {
	ph := p.hosts[host]
	if ph == nil || p.closed {
		return
	}
	for len(ph.idle)+ph.filling < PoolPerHost {
		ph.filling++
		wait := time.Duration(0)
		if ph.failing > 0 {
			wait = min(30*time.Second, 250*time.Millisecond<<min(ph.failing, 7))
		}
		p.wg.Go(func() { p.connect(host, ph, wait) })
	}
}

func (p *RelayPool) connect(host netip.Addr, ph *poolHost, wait time.Duration) {
	if wait > 0 {
		select {
		case <-p.ctx.Done():
		case <-time.After(wait):
		}
	}
	ctx, cancel := context.WithTimeout(p.ctx, relayTimeout)
	c, err := p.n.DialContext(ctx, "tcp", netip.AddrPortFrom(host, RelayPort).String())
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	ph.filling--
	if p.hosts[host] != ph || p.closed {
		if c != nil {
			c.Close()
		}
		return
	}
	if err != nil {
		ph.failing++
		p.fillLocked(host)
		return
	}
	ph.failing = 0
	ic := &idleConn{c: c, done: make(chan struct{})}
	ph.idle = append(ph.idle, ic)
	ic.age = time.AfterFunc(p.maxAge, func() { p.retire(host, ph, ic) })
	p.wg.Go(func() {
		// The relay sends nothing before the request line: whatever
		// this Read returns (bytes, EOF, a reset) means the connection
		// is of no use, unless it is the past deadline take sets.
		var b [1]byte
		ic.n, ic.err = c.Read(b[:])
		close(ic.done)
		p.retire(host, ph, ic)
	})
}

// retire closes ic if it is still idle in the pool (too old, or its
// watcher saw it end) and starts its replacement.
func (p *RelayPool) retire(host netip.Addr, ph *poolHost, ic *idleConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ph.remove(ic) {
		return // taken, or dropped
	}
	ic.age.Stop()
	ic.c.Close()
	if p.hosts[host] == ph {
		p.fillLocked(host)
	}
}

func (ph *poolHost) remove(ic *idleConn) bool {
	for i, x := range ph.idle {
		if x == ic {
			ph.idle = append(ph.idle[:i], ph.idle[i+1:]...)
			return true
		}
	}
	return false
}

// take returns a live idle connection to host, or nil, and starts its
// replacement.
//
// A pooled connection proves nothing about its host now: a host that died
// silently leaves it looking open, and a request written to it would wait
// for the mesh to declare the host lost, then fail without being sent
// elsewhere (the edge cannot know whether a relay forwarded it), where a
// new connection fails its TCP connect quickly, a failure the edge retries
// on another machine. So the pool hands out connections only to a host
// whose last RTT probe was answered: that narrows the window to one probe
// interval (2 s in the agent) from the three lost probes the mesh needs to
// call a host lost.
func (p *RelayPool) take(host netip.Addr) net.Conn {
	if !p.n.answering(host) {
		return nil
	}
	for {
		p.mu.Lock()
		ph := p.hosts[host]
		if ph == nil || len(ph.idle) == 0 {
			p.mu.Unlock()
			return nil
		}
		ic := ph.idle[0]
		ph.idle = ph.idle[1:]
		p.fillLocked(host)
		p.mu.Unlock()
		ic.age.Stop()
		// Stop the watcher: a deadline in the past ends its Read with a
		// timeout, and a connection whose Read ended otherwise is dead.
		_ = ic.c.SetReadDeadline(time.Unix(1, 0))
		<-ic.done
		var ne net.Error
		if ic.n == 0 && errors.As(ic.err, &ne) && ne.Timeout() {
			_ = ic.c.SetReadDeadline(time.Time{})
			return ic.c
		}
		ic.c.Close()
	}
}

// Dial connects to the machine at target through the relay of host, as
// Node.DialRelayPipelined does, on a pooled connection when the pool has
// one (the request line leaves with the caller's first Write), else on a
// new one. The first Read reads the relay's answer:
// a refusal fails it with an error wrapping ErrRelayRefused, a pooled
// connection that could not be replayed with one wrapping
// ErrRelayNotForwarded; either way nothing written reached a machine.
func (p *RelayPool) Dial(ctx context.Context, host netip.Addr, target netip.AddrPort) (net.Conn, error) {
	c := p.take(host)
	if c == nil {
		return p.n.DialRelayPipelined(ctx, host, target)
	}
	// The request line goes out with the first Write (or before the
	// first Read): one segment with the request, where two writes could
	// wait a round trip on each other (netstack delays a small segment
	// while one is unacknowledged).
	return &pooledConn{p: p, host: host, target: target, c: c, sent: []byte(relayMagic + target.String() + "\n")}, nil
}

// pooledConn is a pipelined relay connection that came from the pool: it
// keeps what was written until the relay's first answer byte, to replay
// it on a new connection if the pooled one turns out dead.
type pooledConn struct {
	p      *RelayPool
	host   netip.Addr
	target netip.AddrPort

	cmu       sync.Mutex // guards c, deadlines and closed
	c         net.Conn
	deadlines [2]time.Time // read, write: carried to a replacement
	closed    bool         // by the caller: never replay then

	wmu      sync.Mutex // serialises writes and the replay; guards below
	sent     []byte     // the request line and what followed, until answered
	overflow bool       // more than replayMax was written: no replay
	// lineOut and answered are set under wmu but read without it: a
	// Read must not wait behind a Write that the far end holds up (a
	// machine that answers before it reads the whole body).
	lineOut  atomic.Bool // the request line was written
	answered atomic.Bool // the relay's answer was read: nothing more to keep
	broken   atomic.Bool // a write failed before the answer: Read replays

	rmu  sync.Mutex // serialises Reads; the answer is read by the first
	read bool
	rerr error
}

func (c *pooledConn) conn() net.Conn {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return c.c
}

func (c *pooledConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.answered.Load() || c.overflow {
		c.sent = nil
		return c.out(b)
	}
	if len(c.sent)+len(b) > replayMax {
		c.overflow, c.sent = true, nil
		if c.broken.Load() {
			return 0, fmt.Errorf("%w: %s for %s (more than %d bytes written)", ErrRelayNotForwarded, c.host, c.target, replayMax)
		}
		return c.out(b)
	}
	c.sent = append(c.sent, b...)
	if c.broken.Load() {
		return len(b), nil // kept for the replay
	}
	n, err := c.out(b)
	if err != nil && replayable(err) {
		// The pooled connection was dead: the first Read finds out
		// for sure (an answer byte or not) and replays.
		c.broken.Store(true)
		return len(b), nil
	}
	return n, err
}

// out writes b, behind the request line if that has not gone out yet.
// Called with wmu held.
func (c *pooledConn) out(b []byte) (int, error) {
	if c.lineOut.Load() {
		return c.conn().Write(b)
	}
	c.lineOut.Store(true)
	line := relayMagic + c.target.String() + "\n"
	n, err := c.conn().Write(append([]byte(line), b...))
	return max(0, n-len(line)), err
}

func (c *pooledConn) Read(b []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if !c.read {
		c.read = true
		c.rerr = c.answer()
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	return c.conn().Read(b)
}

// answer reads the relay's answer, replaying the request on a new
// connection if the pooled one ended before it.
func (c *pooledConn) answer() error {
	if !c.lineOut.Load() { // a Read before any Write
		c.wmu.Lock()
		if !c.lineOut.Load() && !c.broken.Load() {
			if _, err := c.out(nil); err != nil {
				if !replayable(err) {
					c.wmu.Unlock()
					return fmt.Errorf("mesh: relay to %s: %w", c.host, err)
				}
				c.broken.Store(true)
			}
		}
		c.wmu.Unlock()
	}
	got, err := readRelayAnswer(c.conn(), c.host, c.target)
	// netstack's Read after our own Close is an EOF: a request the caller
	// gave up on is not sent again.
	c.cmu.Lock()
	closed := c.closed
	c.cmu.Unlock()
	if got == 0 && err != nil && !closed && replayable(err) {
		c.p.replays.Add(1)
		err = c.replay()
	}
	if err == nil && c.broken.Load() {
		// Written bytes were kept for a replay, yet the relay answered:
		// they never went out, and cannot now.
		err = fmt.Errorf("mesh: relay to %s: the connection broke after the relay's answer", c.host)
	}
	c.answered.Store(true) // the next Write lets sent go
	return err
}

// replayable says whether an error that ended a pooled connection before
// the relay's first answer byte means the relay forwarded nothing, so the
// request may go out again on a new connection.
//
// The relay passes a connection's bytes to the machine only after it has
// written "OK\n" (serveRelayConn writes it before it starts copying), and
// TCP delivers in order, netstack's too (a reset makes Read fail only
// after the bytes that arrived before it are read). So:
//   - EOF before any answer byte: the relay closed having written nothing,
//     so it forwarded nothing (its idle limit, its host stopping).
//   - A reset before any answer byte: the far stack aborted the connection
//     without having sent a byte of it. Either it knows nothing of it (the
//     host's agent restarted with a new netstack: the case this is for; or
//     the relay's idle close crossed our request) and nothing was read, or
//     a relay wrote "OK\n", forwarded, then aborted, and the "OK" segment
//     was lost on the way and never retransmitted, the reset overtaking
//     it: that needs a lost segment and the relay's host stopping within
//     the same round trip, which is the one case where a replay could
//     repeat a request.
//   - A timeout, or our own Close: not replayed (the relay may be slow, not
//     dead; the caller gave up).
func replayable(err error) bool {
	var ne net.Error
	if errors.Is(err, ErrRelayRefused) || errors.Is(err, net.ErrClosed) || (errors.As(err, &ne) && ne.Timeout()) {
		return false
	}
	return true
}

func (c *pooledConn) replay() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn().Close()
	if c.overflow {
		return fmt.Errorf("%w: %s for %s (more than %d bytes written)", ErrRelayNotForwarded, c.host, c.target, replayMax)
	}
	ctx, cancel := context.WithTimeout(c.p.ctx, relayTimeout)
	defer cancel()
	nc, err := c.p.n.DialContext(ctx, "tcp", netip.AddrPortFrom(c.host, RelayPort).String())
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrRelayNotForwarded, c.host, err)
	}
	c.cmu.Lock()
	if c.closed {
		c.cmu.Unlock()
		nc.Close()
		return fmt.Errorf("mesh: relay to %s: %w", c.host, net.ErrClosed)
	}
	c.c = nc
	_ = nc.SetReadDeadline(c.deadlines[0])
	_ = nc.SetWriteDeadline(c.deadlines[1])
	c.cmu.Unlock()
	c.broken.Store(false)
	if _, err := nc.Write(c.sent); err != nil {
		return fmt.Errorf("mesh: relay to %s: %w", c.host, err)
	}
	got, err := readRelayAnswer(nc, c.host, c.target)
	if got == 0 && err != nil && replayable(err) {
		// Dead too, and no answer byte: as for the first (replayable),
		// nothing was forwarded; the edge sends it elsewhere.
		return fmt.Errorf("%w: %w", ErrRelayNotForwarded, err)
	}
	return err
}

// readRelayAnswer reads "OK\n" or "ERR reason\n", a byte at a time: what
// follows is the machine's. got is how many bytes of it arrived.
func readRelayAnswer(c net.Conn, host netip.Addr, target netip.AddrPort) (got int, err error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < 256 {
		if _, err := c.Read(b); err != nil {
			return got, fmt.Errorf("mesh: relay to %s: %w", host, err)
		}
		got++
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if s := string(line); s != "OK" {
		return got, fmt.Errorf("%w: %s for %s: %s", ErrRelayRefused, host, target, strings.TrimPrefix(s, "ERR "))
	}
	return got, nil
}

func (c *pooledConn) Close() error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	c.closed = true
	return c.c.Close()
}

// CloseWrite passes a half-close on.
func (c *pooledConn) CloseWrite() error {
	c.wmu.Lock() // after any write kept for a replay
	defer c.wmu.Unlock()
	closeWrite(c.conn())
	return nil
}

func (c *pooledConn) LocalAddr() net.Addr  { return c.conn().LocalAddr() }
func (c *pooledConn) RemoteAddr() net.Addr { return c.conn().RemoteAddr() }

func (c *pooledConn) SetDeadline(t time.Time) error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	c.deadlines = [2]time.Time{t, t}
	return c.c.SetDeadline(t)
}

func (c *pooledConn) SetReadDeadline(t time.Time) error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	c.deadlines[0] = t
	return c.c.SetReadDeadline(t)
}

func (c *pooledConn) SetWriteDeadline(t time.Time) error {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	c.deadlines[1] = t
	return c.c.SetWriteDeadline(t)
}

var _ io.ReadWriteCloser = (*pooledConn)(nil)
