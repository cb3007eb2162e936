package edge

import (
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// Concurrency limits, as in Fly's [services.concurrency]. Each machine's
// service has a load: what this edge has in flight to it. On an HTTP port
// that is requests in flight, whatever the type says: the edge pools its
// connections to machines, so a busy connection is a request in flight. On
// a raw TCP port it is open connections. The soft limit steers requests
// elsewhere; the hard limit is never passed: a request waits for a slot.

// noLimit stands for a limit the service did not set.
const noLimit = math.MaxInt32

// limitsOf is a service's soft and hard limit; soft is never above hard, so
// a machine under its soft limit always has a free slot.
func limitsOf(c *api.Concurrency) (soft, hard int32) {
	soft, hard = noLimit, noLimit
	if c == nil {
		return soft, hard
	}
	if c.HardLimit > 0 {
		hard = int32(min(c.HardLimit, noLimit))
	}
	if c.SoftLimit > 0 {
		soft = int32(min(c.SoftLimit, noLimit))
	}
	return min(soft, hard), hard
}

// load is what this edge has in flight to one service of one machine. It
// outlives snapshots: the table hands the same load to every rebuild while
// the machine stays, so in-flight counts survive route changes.
type load struct {
	app, machine, region string

	n atomic.Int32
	// last is when a request or connection to it last ended (unix
	// nanoseconds), for autostop (Edge.Activity).
	last atomic.Int64
	// downUntil is when a machine that refused a connection may be tried
	// first again (unix nanoseconds; 0: it did not refuse).
	downUntil atomic.Int64
	// queues are the wait queues of the public ports this service serves,
	// replaced at each rebuild.
	queues atomic.Pointer[[]*waitQueue]
	// pending collects queues during a rebuild (under table.mu).
	pending []*waitQueue
	// obs are the machine's metric series, looked up once (metrics.go).
	obs atomic.Pointer[machineObs]
}

// addQueue notes, during a rebuild, that the service serves q's port.
func (l *load) addQueue(q *waitQueue) {
	for _, x := range l.pending {
		if x == q {
			return
		}
	}
	l.pending = append(l.pending, q)
}

// tryAcquire takes a slot unless the load is at hard.
func (l *load) tryAcquire(hard int32) bool {
	for {
		n := l.n.Load()
		if n >= hard {
			return false
		}
		if l.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives a slot back and hands it to a request waiting on one of
// the service's ports.
func (l *load) release() {
	l.last.Store(time.Now().UnixNano())
	l.n.Add(-1)
	if qs := l.queues.Load(); qs != nil {
		for _, q := range *qs {
			q.wakeOne()
		}
	}
}

// refuseBackoff is how long a machine that refused a connection is tried
// only after the others.
const refuseBackoff = 2 * time.Second

func (l *load) refused() { l.downUntil.Store(time.Now().Add(refuseBackoff).UnixNano()) }

func (l *load) connected() {
	if l.downUntil.Load() != 0 {
		l.downUntil.Store(0)
	}
}

// down says whether the machine refused a connection a moment ago.
func (l *load) down() bool {
	u := l.downUntil.Load()
	return u != 0 && time.Now().UnixNano() < u
}

// appLoad is what this edge has in flight for one app, for the per-app cap.
type appLoad struct {
	active atomic.Int32
}

// loadBook keeps the loads and queues across rebuilds. Only table.build
// (under table.mu) and scrapes (under table.mu) touch its maps.
type loadBook struct {
	machines map[string]*load      // key: <app>/<machine>/<internal port>
	apps     map[string]*appLoad   // key: app
	queues   map[string]*waitQueue // key: <app>/<public port>
	seen     map[string]bool
	// forget is called for a machine whose last load went, so its metrics
	// series go too; forgetApp for an app that went.
	forget    func(app, machine string)
	forgetApp func(app string)
	// wake holds the last build's queues until its snapshot is published
	// (wakeWaiters).
	wake []*waitQueue
}

func newLoadBook() *loadBook {
	return &loadBook{
		machines: map[string]*load{}, apps: map[string]*appLoad{},
		queues: map[string]*waitQueue{}, seen: map[string]bool{},
	}
}

func (b *loadBook) begin() {
	clear(b.seen)
	for _, l := range b.machines {
		l.pending = nil
	}
}

// publishQueues gives every load the queues the rebuild found for it.
func (b *loadBook) publishQueues() {
	for _, l := range b.machines {
		qs := l.pending
		l.queues.Store(&qs)
	}
}

func (b *loadBook) machine(app, id, region string, internalPort int) *load {
	key := app + "/" + id + "/" + strconv.Itoa(internalPort)
	b.seen[key] = true
	l := b.machines[key]
	if l == nil || l.region != region {
		l = &load{app: app, machine: id, region: region}
		b.machines[key] = l
	}
	return l
}

func (b *loadBook) app(name string) *appLoad {
	b.seen["app:"+name] = true
	a := b.apps[name]
	if a == nil {
		a = &appLoad{}
		b.apps[name] = a
	}
	return a
}

func (b *loadBook) queue(app string, port int) *waitQueue {
	key := app + "/" + strconv.Itoa(port)
	b.seen["queue:"+key] = true
	q := b.queues[key]
	if q == nil {
		q = &waitQueue{}
		b.queues[key] = q
	}
	return q
}

// end drops what the last build did not use (requests still holding one
// finish with it) and notes every queue for wakeWaiters: the new routes may have room.
func (b *loadBook) end() {
	gone := map[[2]string]bool{}
	kept := map[[2]string]bool{}
	for key, l := range b.machines {
		// A machine out of rotation keeps its load while requests to it
		// are in flight: a drain (drain.go) waits for them.
		if b.seen[key] || l.n.Load() > 0 {
			kept[[2]string{l.app, l.machine}] = true
			continue
		}
		delete(b.machines, key)
		gone[[2]string{l.app, l.machine}] = true
	}
	for name := range b.apps {
		if !b.seen["app:"+name] {
			delete(b.apps, name)
			if b.forgetApp != nil {
				b.forgetApp(name)
			}
		}
	}
	b.wake = b.wake[:0]
	for key, q := range b.queues {
		if !b.seen["queue:"+key] {
			delete(b.queues, key)
		}
		b.wake = append(b.wake, q)
	}
	if b.forget != nil {
		for m := range gone {
			if !kept[m] {
				b.forget(m[0], m[1])
			}
		}
	}
}

// wakeWaiters wakes every request waiting in a queue of the last build:
// called once its snapshot is published, so that a woken request picks
// again from the new routes (woken before, it would find the old ones
// full, wait again, and nothing would wake it).
func (b *loadBook) wakeWaiters() {
	for _, q := range b.wake {
		q.wakeAll()
	}
	b.wake = b.wake[:0]
}

// inflight is what this edge has in flight to one machine, all its
// services summed.
func (b *loadBook) inflight(app, machine string) int32 {
	n, _ := b.activity(app, machine)
	return n
}

// activity is what this edge has in flight to one machine and when its
// last request or connection ended (0: none since it joined the table).
func (b *loadBook) activity(app, machine string) (n int32, last int64) {
	for _, l := range b.machines {
		if l.app == app && l.machine == machine {
			n += l.n.Load()
			last = max(last, l.last.Load())
		}
	}
	return n, last
}

// active sums the loads by app, region and machine, for the metrics.
func (b *loadBook) active() map[[3]string]int32 {
	out := map[[3]string]int32{}
	for _, l := range b.machines {
		out[[3]string{l.app, l.region, l.machine}] += l.n.Load()
	}
	return out
}

// waitQueue holds the requests of one app's public port that found every
// machine at its hard limit, first come first served. A freed slot wakes
// the longest waiting one.
type waitQueue struct {
	mu      sync.Mutex
	waiters []*waiter
}

type waiter struct {
	ch chan struct{} // gets a token when a slot may have freed
}

// enqueue adds a waiter at the back.
func (q *waitQueue) enqueue(w *waiter) {
	q.mu.Lock()
	q.waiters = append(q.waiters, w)
	q.mu.Unlock()
}

// requeue puts a woken waiter that found no slot back at the front.
func (q *waitQueue) requeue(w *waiter) {
	q.mu.Lock()
	q.waiters = append([]*waiter{w}, q.waiters...)
	q.mu.Unlock()
}

// leave takes w out of the queue. If it was woken meanwhile and will not
// use the wake-up, the next waiter gets it.
func (q *waitQueue) leave(w *waiter, useWake bool) {
	q.mu.Lock()
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			q.mu.Unlock()
			return
		}
	}
	q.mu.Unlock()
	select {
	case <-w.ch:
		if !useWake {
			q.wakeOne()
		}
	default:
	}
}

func (q *waitQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters)
}

func (q *waitQueue) wakeOne() {
	q.mu.Lock()
	if len(q.waiters) == 0 {
		q.mu.Unlock()
		return
	}
	w := q.waiters[0]
	q.waiters = q.waiters[1:]
	// Under the lock, so that leave finds either w in the queue or its
	// token. Never blocks: a waiter is queued with an empty channel of
	// capacity 1.
	w.ch <- struct{}{}
	q.mu.Unlock()
}

func (q *waitQueue) wakeAll() {
	q.mu.Lock()
	for _, w := range q.waiters {
		w.ch <- struct{}{}
	}
	q.waiters = nil
	q.mu.Unlock()
}
