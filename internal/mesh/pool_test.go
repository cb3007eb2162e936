package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// echoMachine is a "machine" on loopback that echoes and records every
// byte it receives.
type echoMachine struct {
	ln  net.Listener
	mu  sync.Mutex
	got bytes.Buffer
}

func newEchoMachine(t *testing.T) *echoMachine {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	m := &echoMachine{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					m.mu.Lock()
					m.got.Write(buf[:n])
					m.mu.Unlock()
					if err != nil {
						return
					}
					c.Write(buf[:n])
				}
			}()
		}
	}()
	return m
}

func (m *echoMachine) received() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.got.String()
}

var poolMachine = netip.MustParseAddrPort("[fdaa::2:0:0:a00:5]:8080")

// serveMachineRelay runs n's relay to m until ctx ends; done is closed
// when the relay has returned.
func serveMachineRelay(ctx context.Context, n *Node, m *echoMachine) (done chan struct{}) {
	done = make(chan struct{})
	go func() {
		defer close(done)
		n.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
			if tgt != poolMachine {
				return "", fmt.Errorf("%s is not a machine on this host", tgt)
			}
			return m.ln.Addr().String(), nil
		}, nil)
	}()
	return done
}

// echoOnce writes msg on c and reads its echo.
func echoOnce(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

func newPool(t *testing.T, n *Node) *RelayPool {
	p := NewRelayPool(n)
	t.Cleanup(p.Close)
	return p
}

// A request on a warm pool gets its first answer one mesh round trip
// after it is sent (the fastest of five over a 20 ms-each-way link), at
// least most of a round trip sooner than on a new pipelined connection,
// which needs TCP's handshake first.
func TestRelayPoolOneRoundTrip(t *testing.T) {
	delay := func(c *Config) { c.OneWay = func(from, to string) time.Duration { return oneWay } }
	a, b := newNode(t, 1, delay), newNode(t, 2, delay)
	join(t, a, b)
	testPoolOneRoundTrip(t, a, b)
}

// testPoolOneRoundTrip checks that a request through a's warm pool to
// b's relay is answered in one round trip, most of one sooner than on a
// new connection.
func testPoolOneRoundTrip(t *testing.T, a, b *Node) {
	m := newEchoMachine(t)
	serveInTest(t, func(ctx context.Context) { <-serveMachineRelay(ctx, b, m) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eventually(t, 10*time.Second, "relay listening", func() error {
		c, err := a.DialRelay(ctx, b.Addr(), poolMachine)
		if err == nil {
			c.Close()
		}
		return err
	})
	p := newPool(t, a)
	p.Warm([]netip.Addr{b.Addr()})
	firstAnswer := func(dial func() (net.Conn, error)) time.Duration {
		start := time.Now()
		c, err := dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(c, "ping"); err != nil {
			t.Fatalf("echo through the relay: %v", err)
		}
		return time.Since(start)
	}
	fastest := func(warm bool, dial func() (net.Conn, error)) time.Duration {
		best := time.Hour
		for range 5 {
			if warm {
				eventually(t, 10*time.Second, "pool refilled", func() error {
					if p.Idle(b.Addr()) == 0 {
						return fmt.Errorf("no idle connection to %s", b.Addr())
					}
					return nil
				})
			}
			best = min(best, firstAnswer(dial))
		}
		return best
	}
	pooled := fastest(true, func() (net.Conn, error) { return p.Dial(ctx, b.Addr(), poolMachine) })
	fresh := fastest(false, func() (net.Conn, error) { return a.DialRelayPipelined(ctx, b.Addr(), poolMachine) })
	rtt := 2 * oneWay
	t.Logf("first answer over a %v round trip: warm pool %v, new pipelined connection %v", rtt, pooled, fresh)
	if pooled < rtt || pooled > 2*rtt || pooled > fresh-3*rtt/4 {
		t.Errorf("warm pool: first answer after %v, want one round trip (%v), most of a round trip sooner than a new connection (%v)", pooled, rtt, fresh)
	}
}

// dropBind drops every packet the node sends once down is set: the host
// is gone without a word, as when its agent is killed.
type dropBind struct {
	conn.Bind
	down *atomic.Bool
}

func (d dropBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	if d.down.Load() {
		return nil
	}
	return d.Bind.Send(bufs, ep)
}

// A pooled connection to a host whose agent was killed and restarted (a
// new node, same key and address: a new netstack that knows nothing of
// the connection) is dead, with nothing to show it until a segment is
// sent; a request through the pool still gets its answer, and the machine
// receives it exactly once.
func TestRelayPoolSurvivesPeerRestart(t *testing.T) {
	var down atomic.Bool
	a := newNode(t, 1, nil)
	b := newNode(t, 2, func(c *Config) {
		c.WrapBind = func(b conn.Bind) conn.Bind { return dropBind{b, &down} }
	})
	join(t, a, b)
	m := newEchoMachine(t)
	rctx, rcancel := context.WithCancel(context.Background())
	relayDone := serveMachineRelay(rctx, b, m)
	t.Cleanup(func() { rcancel(); <-relayDone })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	eventually(t, 10*time.Second, "relay listening", func() error {
		c, err := a.DialRelay(ctx, b.Addr(), poolMachine)
		if err == nil {
			c.Close()
		}
		return err
	})
	p := newPool(t, a)
	p.Warm([]netip.Addr{b.Addr()})
	eventually(t, 10*time.Second, "pool warm", func() error {
		if p.Idle(b.Addr()) != 1 {
			return fmt.Errorf("%d idle connections to %s", p.Idle(b.Addr()), b.Addr())
		}
		return nil
	})

	// Kill b: nothing it sends leaves any more (its relay's closes
	// included), then it stops.
	down.Store(true)
	rcancel()
	<-relayDone
	port, key := b.Port(), b.cfg.Key
	b.Close()
	b2 := newNode(t, 2, func(c *Config) { c.Key, c.ListenPort = key, port })
	if err := b2.SetPeers([]Peer{a.Self(loopback), b2.Self(loopback)}); err != nil {
		t.Fatal(err)
	}
	r2ctx, r2cancel := context.WithCancel(context.Background())
	relay2Done := serveMachineRelay(r2ctx, b2, m)
	t.Cleanup(func() {
		// Before b2 closes: the relay, then a and its pool, so that no
		// packet of theirs reaches b2's netstack while its device
		// closes (wireguard-go's netstack TUN can panic writing a reset
		// to a closed channel then).
		r2cancel()
		<-relay2Done
		p.Close()
		a.Close()
	})
	eventually(t, 12*time.Second, "restarted host reachable", func() error {
		if len(b2.RTTs()) != 1 {
			return fmt.Errorf("restarted node has RTTs to %d peers", len(b2.RTTs()))
		}
		if !a.answering(b.Addr()) { // the pool hands out only then
			return errors.New("a's last probe of the restarted node went unanswered")
		}
		return nil
	})
	if n := p.Idle(b.Addr()); n != 1 {
		t.Fatalf("the pool holds %d connections to the killed host; want its dead one, still unnoticed", n)
	}
	c, err := p.Dial(ctx, b.Addr(), poolMachine)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(c, "request-after-restart"); err != nil {
		t.Fatalf("a request through the pool after the far host restarted: %v", err)
	}
	if n := p.replays.Load(); n != 1 {
		t.Errorf("%d requests replayed; want the one that met the dead connection", n)
	}
	if got := m.received(); got != "request-after-restart" {
		t.Errorf("the machine received %q, want the request exactly once", got)
	}
}

// A pooled connection is replaced once it has been idle for the pool's
// maximum age (PoolMaxAge, well inside the relay's RelayIdle), the old one
// closed, so the relay never times out one the pool would hand out.
func TestRelayPoolReplacesIdle(t *testing.T) {
	if PoolMaxAge >= RelayIdle*3/4 {
		t.Fatalf("PoolMaxAge %v leaves under a quarter of RelayIdle (%v) of margin", PoolMaxAge, RelayIdle)
	}
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	join(t, a, b)
	m := newEchoMachine(t)
	serveInTest(t, func(ctx context.Context) { <-serveMachineRelay(ctx, b, m) })
	p := newPool(t, a)
	p.maxAge = 300 * time.Millisecond
	p.Warm([]netip.Addr{b.Addr()})
	pooled := func() *idleConn {
		p.mu.Lock()
		defer p.mu.Unlock()
		if ph := p.hosts[b.Addr()]; ph != nil && len(ph.idle) > 0 {
			return ph.idle[0]
		}
		return nil
	}
	var first *idleConn
	eventually(t, 10*time.Second, "pool warm", func() error {
		if first = pooled(); first == nil {
			return fmt.Errorf("no idle connection to %s", b.Addr())
		}
		return nil
	})
	for i := range 2 {
		eventually(t, 10*time.Second, "idle connection replaced", func() error {
			if c := pooled(); c == nil || c == first {
				return errors.New("the first connection is still the idle one")
			}
			return nil
		})
		select { // the old one closed: its watcher's Read ended
		case <-first.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("replacement %d: the old pooled connection is still open", i)
		}
		first = pooled()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, b.Addr(), poolMachine)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(c, "after-replacements"); err != nil {
		t.Fatal(err)
	}
}

// A host that goes silent (its packets stop) while the pool holds a
// connection to it: once a probe goes unanswered the pool stops handing
// that connection out, and a dial makes a new connection, whose connect
// fails (a failure the edge retries on another machine) instead of a
// request vanishing into a connection to a dead host.
func TestRelayPoolSkipsSilentHost(t *testing.T) {
	var down atomic.Bool
	a := newNode(t, 1, nil)
	b := newNode(t, 2, func(c *Config) {
		c.WrapBind = func(b conn.Bind) conn.Bind { return dropBind{b, &down} }
	})
	join(t, a, b)
	m := newEchoMachine(t)
	serveInTest(t, func(ctx context.Context) { <-serveMachineRelay(ctx, b, m) })
	p := newPool(t, a)
	p.Warm([]netip.Addr{b.Addr()})
	eventually(t, 10*time.Second, "pool warm", func() error {
		if p.Idle(b.Addr()) != 1 {
			return fmt.Errorf("%d idle connections to %s", p.Idle(b.Addr()), b.Addr())
		}
		return nil
	})
	down.Store(true)
	eventually(t, 10*time.Second, "a probe unanswered", func() error {
		if a.answering(b.Addr()) {
			return errors.New("b still answers")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := p.Dial(ctx, b.Addr(), poolMachine)
	if err == nil {
		c.Close()
		t.Fatal("a dial to a silent host returned a connection; want its connect to fail")
	}
	if n := p.Idle(b.Addr()); n != 1 {
		t.Errorf("%d idle connections to the silent host; want its pooled one kept, not handed out", n)
	}
	down.Store(false)
	eventually(t, 10*time.Second, "b answers again", func() error {
		if !a.answering(b.Addr()) {
			return errors.New("b still silent")
		}
		return nil
	})
}

// A request the caller gives up on (Close while the first Read waits for
// the relay's answer) is not sent again on a new connection: a replay is
// only for a pooled connection that died by itself.
func TestRelayPoolNoReplayAfterClose(t *testing.T) {
	a, b := newNode(t, 1, nil), newNode(t, 2, nil)
	join(t, a, b)
	m := newEchoMachine(t)
	var asked atomic.Int32
	release := make(chan struct{})
	serveInTest(t, func(ctx context.Context) {
		b.ServeRelay(ctx, func(tgt netip.AddrPort) (string, error) {
			asked.Add(1)
			<-release // the relay holds its answer
			return m.ln.Addr().String(), nil
		}, nil)
	})
	t.Cleanup(func() { close(release) }) // before the relay stops (cleanups run last first)
	p := newPool(t, a)
	p.Warm([]netip.Addr{b.Addr()})
	eventually(t, 10*time.Second, "pool warm", func() error {
		if p.Idle(b.Addr()) != 1 {
			return fmt.Errorf("%d idle connections to %s", p.Idle(b.Addr()), b.Addr())
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, b.Addr(), poolMachine)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("POST /pay")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "relay asked", func() error {
		if asked.Load() != 1 {
			return errors.New("the relay has not read the request line")
		}
		return nil
	})
	readErr := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 10)); readErr <- err }()
	c.Close()
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("Read after Close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still waiting 10 s after Close")
	}
	if n := p.replays.Load(); n != 0 {
		t.Errorf("%d replays of a request whose connection the caller closed", n)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("the relay was asked %d times; want once", n)
	}
}
