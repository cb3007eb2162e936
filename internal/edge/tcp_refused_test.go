package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// storeWorld is an edge on 127.0.0.1 fed by a real NATS, with its JSON
// access log in a buffer: what an agent runs, minus the agent.
type storeWorld struct {
	t      *testing.T
	st     *store.Store
	e      *Edge
	access *syncBuffer
}

func newStoreWorld(t *testing.T) *storeWorld {
	t.Helper()
	log := testLog(t)
	nats, err := store.RunEmbedded(t.TempDir(), "127.0.0.1:0", "secret", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	st, err := store.Open(context.Background(), nats.URL(), "secret", "edge-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	access := &syncBuffer{}
	e, err := newEdge(Config{
		Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Store: st,
		Log: log, AccessLog: slog.New(slog.NewJSONHandler(access, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	w := &storeWorld{t: t, st: st, e: e, access: access}
	w.put(st.Hosts, "h-ams", api.Host{ID: "h-ams", Region: "ams", Status: "up"})
	run(t, e)
	return w
}

func (w *storeWorld) put(kv jetstream.KeyValue, key string, v any) {
	w.t.Helper()
	if _, err := store.Put(context.Background(), kv, key, v); err != nil {
		w.t.Fatal(err)
	}
}

// rawApp stores app with one machine per address in addrs (ip:port),
// each with a raw TCP service on public port and in state.
func (w *storeWorld) rawApp(app string, port int, state string, addrs ...string) {
	w.t.Helper()
	w.put(w.st.Apps, app, api.App{Name: app})
	for i, addr := range addrs {
		ip, p, _ := net.SplitHostPort(addr)
		internal, _ := strconv.Atoi(p)
		id := fmt.Sprintf("%s-m%d", app, i+1)
		w.put(w.st.Machines, store.MachineKey(app, id), store.MachineSpec{
			ID: id, App: app, Region: "ams", HostID: "h-ams", PrivateIP: ip, Desired: store.DesireStarted, Generation: 1,
			Config: api.MachineConfig{Services: []api.Service{{Protocol: "tcp", InternalPort: internal, Ports: []api.Port{{Port: port}}}}},
		})
		w.put(w.st.Status, store.MachineKey(app, id), store.MachineStatus{
			ID: id, App: app, HostID: "h-ams", State: state, Ready: state == api.StateStarted, Generation: 1,
		})
	}
}

// waitListening waits until the edge accepts on port and has the wanted
// number of machines in rotation for app there.
func (w *storeWorld) waitListening(app string, port, machines int) string {
	w.t.Helper()
	waitFor(w.t, fmt.Sprintf("the edge to listen on %d with %d machine(s) of %s in rotation", port, machines, app), func() bool {
		return slices.Contains(w.e.Listening(), port) && len(w.e.Snapshot().Candidates(app+"."+DefaultDomain, port)) == machines
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// accessLines are the access log's raw TCP lines for app.
func (w *storeWorld) accessLines(app string) []map[string]any {
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(w.access.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "tcp connection" && m["app"] == app {
			out = append(out, m)
		}
	}
	return out
}

// appLog follows app's log stream (store.LogStream, what `perch logs` reads)
// from its start.
type appLog struct {
	mu    sync.Mutex
	lines []api.LogLine
}

func (w *storeWorld) followLog(app string) *appLog {
	w.t.Helper()
	ctx := context.Background()
	if err := w.st.EnsureAppLogs(ctx, app, 0); err != nil {
		w.t.Fatal(err)
	}
	cons, err := w.st.JetStream().OrderedConsumer(ctx, store.LogStream(app), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{store.LogFilter(app)}, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	l := &appLog{}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		var line api.LogLine
		if err := json.Unmarshal(msg.Data(), &line); err != nil {
			w.t.Errorf("a line of %s's log is not a LogLine: %q", app, msg.Data())
			return
		}
		l.mu.Lock()
		l.lines = append(l.lines, line)
		l.mu.Unlock()
	})
	if err != nil {
		w.t.Fatal(err)
	}
	w.t.Cleanup(cc.Stop)
	return l
}

func (l *appLog) get() []api.LogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

// expectClosed connects to addr as a client would and wants the edge to
// close the connection without a byte.
func expectClosed(t *testing.T, addr string) (client string) {
	t.Helper()
	c := dialEdge(t, addr)
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the edge kept a connection with no machine to go to open for 15s")
	}
	if len(got) > 0 {
		t.Errorf("the client got %q; want the connection closed with nothing", got)
	}
	return c.LocalAddr().(*net.TCPAddr).IP.String()
}

// A client of a raw TCP app whose only machine is stopped sees its
// connection closed; the edge's access log, its metrics and the app's own
// log (`perch logs`) say why.
func TestRawTCPNoMachineClosedWithReason(t *testing.T) {
	w := newStoreWorld(t)
	port := freePort(t)
	logs := w.followLog("shop")
	w.rawApp("shop", port, api.StateStopped, "127.0.0.2:5432")
	addr := w.waitListening("shop", port, 0)

	client := expectClosed(t, addr)

	why := fmt.Sprintf("no machine to go to: app shop has no started machine for port %d", port)
	var lines []map[string]any
	waitFor(t, "the access log line of the refused connection", func() bool {
		lines = w.accessLines("shop")
		return len(lines) > 0
	})
	for k, want := range map[string]any{
		"client": client, "port": strconv.Itoa(port), "app": "shop", "reason": "no_machine", "err": why, "attempts": 0.0, "machine": "",
	} {
		if lines[0][k] != want {
			t.Errorf("access log %s = %v, want %v (line %v)", k, lines[0][k], want, lines[0])
		}
	}
	if n := counter(t, w.e, "perch_edge_tcp_rejected_total", map[string]string{"app": "shop", "reason": "no_machine"}); n != 1 {
		t.Errorf("perch_edge_tcp_rejected_total{app=shop,reason=no_machine} = %v, want 1", n)
	}

	var got []api.LogLine
	waitFor(t, "the edge's line in shop's log", func() bool { got = logs.get(); return len(got) > 0 })
	want := fmt.Sprintf("raw TCP connection from %s to port %d closed: %s", client, port, why)
	if l := got[0]; l.App != "shop" || l.Region != "ams" || l.MachineID != EdgeLogMachine || l.Stream != "edge" || l.Message != want {
		t.Errorf("shop's log has %+v; want from machine %q of ams, stream edge, message %q", l, EdgeLogMachine, want)
	}
}

// When every machine in rotation refuses, the client's connection is
// closed and the reason says how many were tried and what went wrong.
func TestRawTCPUnreachableClosedWithReason(t *testing.T) {
	w := newStoreWorld(t)
	port := freePort(t)
	logs := w.followLog("db")
	d1, d2 := deadMachine(t, "d1", "ams", "127.0.0.2"), deadMachine(t, "d2", "ams", "127.0.0.3")
	w.rawApp("db", port, api.StateStarted, net.JoinHostPort(d1.ip, strconv.Itoa(d1.port)), net.JoinHostPort(d2.ip, strconv.Itoa(d2.port)))
	addr := w.waitListening("db", port, 2)

	client := expectClosed(t, addr)

	why := fmt.Sprintf("no machine to go to: app db has started machines for port %d but none could be reached: 2 machines tried (connection refused)", port)
	var lines []map[string]any
	waitFor(t, "the access log line of the refused connection", func() bool {
		lines = w.accessLines("db")
		return len(lines) > 0
	})
	if l := lines[0]; l["reason"] != "unreachable" || l["err"] != why || l["attempts"] != 2.0 || l["client"] != client {
		t.Errorf("access log line %v; want reason unreachable, attempts 2, client %s, err %q", l, client, why)
	}
	if n := counter(t, w.e, "perch_edge_tcp_rejected_total", map[string]string{"app": "db", "reason": "unreachable"}); n != 1 {
		t.Errorf("perch_edge_tcp_rejected_total{app=db,reason=unreachable} = %v, want 1", n)
	}
	var got []api.LogLine
	waitFor(t, "the edge's line in db's log", func() bool { got = logs.get(); return len(got) > 0 })
	if !strings.HasSuffix(got[0].Message, "closed: "+why) || got[0].Stream != "edge" {
		t.Errorf("db's log has %+v; want the edge saying %q", got[0], why)
	}
}

var heldBackRE = regexp.MustCompile(`^(\d+) more raw TCP connections? closed in the last `)

// A flood of connections to an app with no machine gets every one into
// the access log and the metric, but only about a line a second into the
// app's log, the others counted.
func TestRawTCPRefusalFloodIsRateLimitedInAppLog(t *testing.T) {
	w := newStoreWorld(t)
	port := freePort(t)
	logs := w.followLog("shop")
	w.rawApp("shop", port, api.StateStopped, "127.0.0.2:5432")
	addr := w.waitListening("shop", port, 0)

	const conns = 50
	start := time.Now()
	for range conns {
		expectClosed(t, addr)
	}
	took := time.Since(start)

	waitFor(t, "an access log line per connection", func() bool { return len(w.accessLines("shop")) == conns })
	if n := counter(t, w.e, "perch_edge_tcp_rejected_total", map[string]string{"app": "shop", "reason": "no_machine"}); n != conns {
		t.Errorf("perch_edge_tcp_rejected_total{app=shop,reason=no_machine} = %v, want %d", n, conns)
	}

	// Every connection is accounted for in the app's log: one line each
	// for some, the rest in the counts of held-back lines.
	var got []api.LogLine
	var told int
	waitFor(t, fmt.Sprintf("shop's log to account for all %d connections", conns), func() bool {
		got, told = logs.get(), 0
		for _, l := range got {
			if m := heldBackRE.FindStringSubmatch(l.Message); m != nil {
				n, _ := strconv.Atoi(m[1])
				told += n
				if !strings.Contains(l.Message, "the last: raw TCP connection from 127.0.0.1 to port "+strconv.Itoa(port)+" closed: no machine to go to") {
					t.Errorf("held-back line does not give the last reason: %q", l.Message)
				}
			} else {
				told++
			}
		}
		return told >= conns
	})
	if told != conns {
		t.Errorf("shop's log accounts for %d connections, want %d: %v", told, conns, got)
	}
	// At most a line per interval, plus the one that opens each.
	if limit := 2 * (int(took/appLogInterval) + 1); len(got) > limit {
		t.Errorf("shop's log got %d lines for %d connections in %s; want at most %d", len(got), conns, took, limit)
	}
}
