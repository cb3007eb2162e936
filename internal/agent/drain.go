package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Retiring a machine: whatever asks a running machine to go (a stop, a
// destroy without force, a scale down, a deploy replacing it), its host
// first drains it, then stops it the way its config says. Draining: the
// status says the machine is not ready, which takes it out of every
// edge's rotation through the watch; then the host asks every edge that
// is up (store.DrainSubject) to answer once its requests and connections
// to the machine have finished, waiting at most the stop timeout. Then
// the machine gets its stop signal and the stop timeout to exit before
// SIGKILL. destroy --force skips all of it.

// stopConfig is the signal and timeout a machine is stopped with: those
// of the last stop request, else the config's stop_config, else the
// defaults.
func stopConfig(spec store.MachineSpec) (syscall.Signal, string, time.Duration) {
	name, timeout := spec.StopSignal, spec.StopTimeout
	if sc := spec.Config.StopConfig; sc != nil {
		if name == "" {
			name = sc.Signal
		}
		if timeout == 0 && sc.Timeout != "" {
			if d, err := time.ParseDuration(sc.Timeout); err == nil {
				timeout = d
			}
		}
	}
	if name == "" {
		name = api.DefaultStopSignal
	}
	if timeout <= 0 {
		timeout = api.DefaultStopTimeout
	}
	sig := parseSignal(name)
	return sig, signalName(sig), timeout
}

// retire drains the running machine and stops its process gracefully,
// reporting state (stopping or destroying) while it does.
func (w *worker) retire(ctx context.Context, spec store.MachineSpec, state, evType string) {
	sig, name, timeout := stopConfig(spec)
	w.setState(ctx, spec, state, evType, because(spec, fmt.Sprintf("draining, then %s and up to %s to exit", name, timeout)), func(s *store.MachineStatus) {
		s.NotReady = state + ": draining"
	})
	start := time.Now()
	w.a.drain(ctx, spec.App, spec.ID, timeout)
	w.log.Info("machine drained; stopping", "signal", name, "timeout", timeout, "drain", time.Since(start).Round(time.Millisecond))
	if err := w.driver().Stop(ctx, w.id, sig, timeout); err != nil {
		w.log.Warn("stop", "err", err)
	}
	// The exit this stop causes is not for the restart policy: a start
	// asked for meanwhile (autostart during an autostop's drain) must not
	// take it for an exit of the run it asks for.
	w.waiting = false
	w.waitSeq++
}

// drain asks every edge that is up to let the machine's traffic finish
// and waits for their answers, at most wait (and a little more for the
// answers to travel).
func (a *Agent) drain(ctx context.Context, app, id string, wait time.Duration) {
	hosts, err := store.List[api.Host](ctx, a.st.Hosts, ">")
	if err != nil {
		a.log.Warn("drain: listing hosts; stopping without waiting for the edges", "machine", id, "err", err)
		return
	}
	want := map[string]bool{}
	for _, h := range hosts {
		if h.Status == api.HostUp && h.Role != api.HostRoleControl {
			want[h.ID] = true
		}
	}
	if len(want) == 0 {
		return
	}
	nc := a.st.Conn()
	inbox := nc.NewInbox() // under the host's own inbox prefix: the only inboxes its NATS user may subscribe to
	replies := make(chan *nats.Msg, len(want)+4)
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		a.log.Warn("drain: subscribing; stopping without waiting for the edges", "machine", id, "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(store.DrainRequest{App: app, ID: id, Wait: wait})
	if err := nc.PublishRequest(store.DrainSubject(a.host.ID), inbox, req); err != nil {
		a.log.Warn("drain: asking the edges; stopping without waiting for them", "machine", id, "err", err)
		return
	}
	deadline := time.NewTimer(wait + 2*time.Second)
	defer deadline.Stop()
	for len(want) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			a.log.Warn("drain: edges did not answer in time", "machine", id, "missing", len(want))
			return
		case m := <-replies:
			var r store.DrainReply
			if json.Unmarshal(m.Data, &r) == nil {
				delete(want, r.HostID)
			}
		}
	}
}

// signalName is the name of the signals parseSignal knows.
func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGQUIT:
		return "SIGQUIT"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGHUP:
		return "SIGHUP"
	case syscall.SIGUSR1:
		return "SIGUSR1"
	case syscall.SIGUSR2:
		return "SIGUSR2"
	}
	return "SIGTERM"
}
