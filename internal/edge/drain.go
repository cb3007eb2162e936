package edge

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/store"
)

// Drains: before a host stops a machine (deploy, scale down, stop,
// destroy) it marks the machine not ready in its status and asks every
// edge, on store.DrainSubject, to let the machine's traffic finish. The
// status takes the machine out of this edge's rotation through the watch;
// the answer waits for that and for the requests and connections this
// edge has in flight to it, up to the wait the host gives.

// drainPoll is how often an edge looks again while it waits for a
// machine's requests to finish: only during a drain, never when idle.
const drainPoll = 10 * time.Millisecond

// serveDrains answers drain requests until ctx is done.
func (e *Edge) serveDrains(ctx context.Context, nc *nats.Conn) {
	sub, err := nc.Subscribe(store.DrainSubjects, func(m *nats.Msg) {
		var req store.DrainRequest
		if err := json.Unmarshal(m.Data, &req); err != nil || m.Reply == "" {
			return
		}
		if host, ok := e.machineHost(req.App, req.ID); ok && host != store.DrainSender(m.Subject) {
			// Only a machine's own host drains it: another host asking is
			// not answered (nor waited on for up to 10 minutes).
			e.log.Warn("drain request for another host's machine ignored", "from", store.DrainSender(m.Subject), "app", req.App, "machine", req.ID, "host", host)
			return
		}
		go e.answerDrain(ctx, m, req)
	})
	if err != nil {
		e.log.Warn("cannot serve drains; machines will stop without waiting for this edge", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

func (e *Edge) answerDrain(ctx context.Context, m *nats.Msg, req store.DrainRequest) {
	wait := min(max(req.Wait, 0), 10*time.Minute)
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	// A request that read the last snapshot a moment before the machine
	// left it may not have taken its slot yet: the machine counts as
	// drained when it was so at two looks in a row.
	clear := false
	for {
		routed, n := e.drainState(req.App, req.ID)
		done := !routed && n == 0 && clear
		clear = !routed && n == 0
		if !done {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				continue
			case <-deadline.C:
			}
		}
		b, _ := json.Marshal(store.DrainReply{HostID: e.cfg.HostID, Routed: routed, InFlight: int(n)})
		if err := m.Respond(b); err != nil {
			e.log.Debug("drain answer", "err", err)
		}
		if !done {
			e.log.Info("machine stops with traffic left", "app", req.App, "machine", req.ID, "routed", routed, "in_flight", n)
		}
		return
	}
}

// machineHost is the host of a machine this edge knows.
func (e *Edge) machineHost(app, id string) (string, bool) {
	for _, r := range e.table.Snapshot().Machines() {
		if r.App == app && r.ID == id {
			return r.HostID, true
		}
	}
	return "", false
}

// drainState says whether this edge still routes to a machine and what
// it has in flight to it.
func (e *Edge) drainState(app, id string) (routed bool, inflight int32) {
	for _, r := range e.table.Snapshot().Machines() {
		if r.App == app && r.ID == id && r.Started {
			routed = true
		}
	}
	e.table.mu.Lock()
	inflight = e.table.book.inflight(app, id)
	e.table.mu.Unlock()
	return routed, inflight
}

// Activity is what this edge has in flight to a machine, and when the
// last request or connection it sent there ended (zero if none did since
// the machine joined the table): the host's autostop reads it to decide
// that a machine is idle.
func (e *Edge) Activity(app, id string) (inflight int32, last time.Time) {
	e.table.mu.Lock()
	n, ns := e.table.book.activity(app, id)
	e.table.mu.Unlock()
	if ns > 0 {
		last = time.Unix(0, ns)
	}
	return n, last
}
