// Package accessnet is the benchmarks' access network: a client's
// connection to its city's edge (or to a far one) with every byte delayed
// by a one-way time in each direction, as a real path would.
package accessnet

import (
	"context"
	"net"
	"sync"
	"time"
)

// delayConn is a client's connection to its edge across the access
// network: every byte arrives oneWay after it was sent, in each direction.
// Writes return at once, as a network queues rather than blocks, so a
// request and the bytes after it keep their spacing.
type delayConn struct {
	net.Conn
	oneWay time.Duration

	out chan chunk // to the sending goroutine
	in  chan chunk // from the receiving goroutine

	pending []byte // the rest of a chunk a short Read left
	readErr error  // returned once pending is drained

	mu       sync.Mutex
	writeErr error

	closed    chan struct{}
	closeOnce sync.Once
}

type chunk struct {
	due time.Time
	b   []byte
	err error
}

// DialDelayed dials addr and wraps the connection. The dial itself costs
// one access round trip (SYN there, SYN-ACK back) before the client can send.
func DialDelayed(oneWay time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if err := sleepCtx(ctx, 2*oneWay); err != nil {
			c.Close()
			return nil, err
		}
		return newDelayConn(c, oneWay), nil
	}
}

func newDelayConn(c net.Conn, oneWay time.Duration) *delayConn {
	d := &delayConn{Conn: c, oneWay: oneWay, out: make(chan chunk, 4096), in: make(chan chunk, 4096), closed: make(chan struct{})}
	go d.send()
	go d.receive()
	return d
}

func (d *delayConn) Write(b []byte) (int, error) {
	d.mu.Lock()
	err := d.writeErr
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	select {
	case d.out <- chunk{due: time.Now().Add(d.oneWay), b: append([]byte(nil), b...)}:
		return len(b), nil
	case <-d.closed:
		return 0, net.ErrClosed
	}
}

func (d *delayConn) send() {
	for {
		select {
		case c := <-d.out:
			if !sleepUntil(c.due, d.closed) {
				return
			}
			if _, err := d.Conn.Write(c.b); err != nil {
				d.mu.Lock()
				d.writeErr = err
				d.mu.Unlock()
				return
			}
		case <-d.closed:
			return
		}
	}
}

func (d *delayConn) receive() {
	for {
		buf := make([]byte, 32<<10)
		n, err := d.Conn.Read(buf)
		select {
		case d.in <- chunk{due: time.Now().Add(d.oneWay), b: buf[:n], err: err}:
		case <-d.closed:
			return
		}
		if err != nil {
			return
		}
	}
}

func (d *delayConn) Read(p []byte) (int, error) {
	for len(d.pending) == 0 {
		if d.readErr != nil {
			return 0, d.readErr
		}
		select {
		case c := <-d.in:
			if !sleepUntil(c.due, d.closed) {
				return 0, net.ErrClosed
			}
			d.pending, d.readErr = c.b, c.err
		case <-d.closed:
			return 0, net.ErrClosed
		}
	}
	n := copy(p, d.pending)
	d.pending = d.pending[n:]
	return n, nil
}

func (d *delayConn) Close() error {
	err := net.ErrClosed
	d.closeOnce.Do(func() {
		close(d.closed)
		err = d.Conn.Close()
	})
	return err
}

// sleepUntil waits for t and reports false if stop closed first.
func sleepUntil(t time.Time, stop <-chan struct{}) bool {
	wait := time.Until(t)
	if wait <= 0 {
		return true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-stop:
		return false
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if !sleepUntil(time.Now().Add(d), ctx.Done()) {
		return ctx.Err()
	}
	return nil
}
