package agent

import (
	"context"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/store"
)

// statusQueue holds the machine statuses this host could not write (its
// region cut off from the control plane), the latest of each machine,
// and writes them once the control plane answers again. A machine's
// writes are in order: its worker and the queue write it under one lock
// per machine, and a write that succeeds drops what was queued before.
type statusQueue struct {
	mu      sync.Mutex
	locks   map[string]*sync.Mutex // by machine key
	pending map[string]store.MachineStatus
}

// statusRetry is how often queued statuses are tried again.
const statusRetry = 2 * time.Second

func (q *statusQueue) lock(key string) *sync.Mutex {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.locks == nil {
		q.locks, q.pending = map[string]*sync.Mutex{}, map[string]store.MachineStatus{}
	}
	l := q.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		q.locks[key] = l
	}
	return l
}

// putStatus writes machine key's status, queueing it if the write fails.
func (a *Agent) putStatus(ctx context.Context, key string, s store.MachineStatus) error {
	l := a.statusQ.lock(key)
	l.Lock()
	defer l.Unlock()
	_, err := store.Put(ctx, a.st.Status, key, s)
	a.statusQ.mu.Lock()
	if err != nil && ctx.Err() == nil {
		a.statusQ.pending[key] = s
	} else if err == nil {
		delete(a.statusQ.pending, key)
	}
	a.statusQ.mu.Unlock()
	return err
}

// dropStatus forgets machine key's queued status: the machine is gone.
func (a *Agent) dropStatus(key string) {
	l := a.statusQ.lock(key)
	l.Lock()
	defer l.Unlock()
	a.statusQ.mu.Lock()
	delete(a.statusQ.pending, key)
	delete(a.statusQ.locks, key)
	a.statusQ.mu.Unlock()
}

// runStatusQueue writes the queued statuses every statusRetry until ctx
// is done.
func (a *Agent) runStatusQueue(ctx context.Context) {
	t := time.NewTicker(statusRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.statusQ.mu.Lock()
		keys := make([]string, 0, len(a.statusQ.pending))
		for k := range a.statusQ.pending {
			keys = append(keys, k)
		}
		a.statusQ.mu.Unlock()
		sent := 0
		for _, key := range keys {
			if a.flushStatus(ctx, key) {
				sent++
			}
		}
		if sent > 0 {
			a.log.Info("queued machine statuses written", "count", sent)
		}
	}
}

func (a *Agent) flushStatus(ctx context.Context, key string) bool {
	l := a.statusQ.lock(key)
	l.Lock()
	defer l.Unlock()
	a.statusQ.mu.Lock()
	s, ok := a.statusQ.pending[key]
	a.statusQ.mu.Unlock()
	if !ok {
		return false
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := store.Put(wctx, a.st.Status, key, s); err != nil {
		return false
	}
	a.statusQ.mu.Lock()
	delete(a.statusQ.pending, key)
	a.statusQ.mu.Unlock()
	return true
}
