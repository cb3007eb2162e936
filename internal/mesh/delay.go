package mesh

import (
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
)

// maxQueued bounds each destination's queue, like a router's buffer: past
// it packets are dropped (WireGuard's inner TCP recovers), never blocked.
const maxQueued = 8192

// DelayBind is a conn.Bind whose Send holds each packet for a one-way
// latency chosen per destination, then sends it through the inner Bind.
// Packets to one destination leave in order; Send never blocks. Receiving
// is not delayed: each side delays what it sends, so a round trip costs
// both directions' latency.
type DelayBind struct {
	conn.Bind
	delay func(dst netip.AddrPort) time.Duration

	mu     sync.Mutex
	queues map[string]*delayQueue
	done   chan struct{} // closed by Close; queues' goroutines exit
}

var _ conn.Bind = (*DelayBind)(nil)

// NewDelayBind wraps inner. delay is called for every packet, so it may
// change as peers come and go; zero or less sends at once.
func NewDelayBind(inner conn.Bind, delay func(dst netip.AddrPort) time.Duration) *DelayBind {
	return &DelayBind{Bind: inner, delay: delay, queues: map[string]*delayQueue{}, done: make(chan struct{})}
}

type delayed struct {
	due  time.Time
	bufs [][]byte
}

type delayQueue struct {
	ep   conn.Endpoint
	mu   sync.Mutex
	q    []delayed
	wake chan struct{} // 1-buffered: "the queue got a packet"
}

// Open reopens the inner Bind; WireGuard closes and reopens its Bind when
// the device goes down and up.
func (b *DelayBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, p, err := b.Bind.Open(port)
	if err == nil {
		b.mu.Lock()
		select {
		case <-b.done:
			b.done = make(chan struct{})
		default:
		}
		b.mu.Unlock()
	}
	return fns, p, err
}

// Close drops queued packets and closes the inner Bind.
func (b *DelayBind) Close() error {
	b.mu.Lock()
	select {
	case <-b.done:
	default:
		close(b.done)
	}
	b.queues = map[string]*delayQueue{}
	b.mu.Unlock()
	return b.Bind.Close()
}

// Send queues copies of bufs (the caller reuses them once Send returns).
func (b *DelayBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	dst, err := netip.ParseAddrPort(ep.DstToString())
	d := time.Duration(0)
	if err == nil {
		d = b.delay(dst)
	}
	if d <= 0 {
		return b.Bind.Send(bufs, ep)
	}
	cp := make([][]byte, len(bufs))
	for i, buf := range bufs {
		cp[i] = append([]byte(nil), buf...)
	}
	q := b.queue(ep)
	q.mu.Lock()
	if len(q.q) < maxQueued {
		q.q = append(q.q, delayed{due: time.Now().Add(d), bufs: cp})
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

func (b *DelayBind) queue(ep conn.Endpoint) *delayQueue {
	key := ep.DstToString()
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[key]
	if q == nil {
		q = &delayQueue{ep: ep, wake: make(chan struct{}, 1)}
		b.queues[key] = q
		go b.drain(q, b.done)
	}
	return q
}

// drain sends the queue's packets when they fall due, in order.
func (b *DelayBind) drain(q *delayQueue, done chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		var next delayed
		have := len(q.q) > 0
		if have {
			next = q.q[0]
		}
		q.mu.Unlock()
		if !have {
			select {
			case <-q.wake:
				continue
			case <-done:
				return
			}
		}
		if wait := time.Until(next.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
		q.mu.Lock()
		q.q = q.q[1:]
		q.mu.Unlock()
		// A send error is a lost packet, as on a real link.
		_ = b.Bind.Send(next.bufs, q.ep)
	}
}
