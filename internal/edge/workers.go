package edge

import (
	"sync"
	"time"
)

// connWorkers are the goroutines that serve client connections. One whose
// connection ended waits up to workerIdle for the next: a new goroutine
// starts on a small stack, which serving a request (a TLS handshake, the
// fast path's calls) grows by copying it two or three times
// (runtime.newstack: a tenth of the edge's CPU with a connection per
// request), while a kept one has the stack grown already.
type connWorkers struct {
	wg *sync.WaitGroup // the goroutines are its

	mu     sync.Mutex
	idle   []*connWorker // the longest idle first
	timer  *time.Timer   // ends workers idle for workerIdle; armed while any is
	armed  bool
	closed bool
}

type connWorker struct {
	next  chan func() // the next connection's work; closed: end
	since time.Time
}

const (
	// workerIdle is how long a worker waits for a next connection.
	workerIdle = 10 * time.Second
	// maxIdleWorkers bounds the waiting workers.
	maxIdleWorkers = 1024
)

// run runs f on a waiting worker, or a new one.
func (p *connWorkers) run(f func()) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1] // the most recent: its stack is likely still in cache
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		w.next <- f // buffered: never blocks
		return
	}
	p.mu.Unlock()
	p.wg.Go(func() {
		w := &connWorker{next: make(chan func(), 1)}
		for f != nil {
			f()
			f = p.wait(w)
		}
	})
}

// wait parks w until it is given more work; nil when it is to end.
func (p *connWorkers) wait(w *connWorker) func() {
	p.mu.Lock()
	if p.closed || len(p.idle) >= maxIdleWorkers {
		p.mu.Unlock()
		return nil
	}
	w.since = time.Now()
	p.idle = append(p.idle, w)
	if !p.armed {
		p.armed = true
		if p.timer == nil {
			p.timer = time.AfterFunc(workerIdle, p.expire)
		} else {
			p.timer.Reset(workerIdle)
		}
	}
	p.mu.Unlock()
	return <-w.next // nil once closed
}

// expire ends the workers idle for workerIdle and arms the timer again
// for the next.
func (p *connWorkers) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	n := 0
	for n < len(p.idle) && now.Sub(p.idle[n].since) >= workerIdle {
		close(p.idle[n].next)
		n++
	}
	p.idle = append(p.idle[:0], p.idle[n:]...)
	clear(p.idle[len(p.idle):cap(p.idle)])
	if len(p.idle) == 0 || p.closed {
		p.armed = false
		return
	}
	p.timer.Reset(workerIdle - now.Sub(p.idle[0].since))
}

// close ends the waiting workers, and those that finish later.
func (p *connWorkers) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, w := range p.idle {
		close(w.next)
	}
	p.idle = nil
	if p.timer != nil {
		p.timer.Stop()
	}
	p.armed = false
}
