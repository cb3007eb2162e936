package edge

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// holder is a fake machine whose requests to /hold stay in flight until
// the test lets them go; any other path is answered at once.
type holder struct {
	*machine
	held    chan struct{} // a token per /hold request that arrived
	release chan struct{} // closed to let every held request finish
	once    sync.Once
}

func startHolder(t *testing.T, id, region, ip string) *holder {
	t.Helper()
	h := &holder{held: make(chan struct{}, 100), release: make(chan struct{})}
	h.machine = startMachine(t, id, region, ip, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			h.held <- struct{}{}
			select {
			case <-h.release:
			case <-r.Context().Done():
			}
		}
		fmt.Fprintf(w, `{"machine":%q}`, id)
	})
	return h
}

// letGo lets every held request finish. Tests defer it: the servers'
// cleanups wait for their handlers.
func (h *holder) letGo() { h.once.Do(func() { close(h.release) }) }

// waitHeld waits until n more /hold requests reached the machine.
func (h *holder) waitHeld(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-h.held:
		case <-time.After(5 * time.Second):
			t.Fatalf("a held request did not reach %s", h.id)
		}
	}
}

// limited places m like place, with a concurrency section.
func (w *world) limited(app string, m *machine, port int, c *api.Concurrency) {
	w.place(app, m, port, api.StateStarted)
	key := store.MachineKey(app, m.id)
	spec := w.e.table.machines[key]
	spec.Config.Services[0].Concurrency = c
	w.e.table.setMachine(key, spec)
}

// hold sends GET /hold in the background; its outcome arrives on the
// returned channel.
func hold(srv *httptest.Server, host string) <-chan string {
	out := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", srv.URL+"/hold", nil)
		req.Host = host
		res, err := srv.Client().Do(req)
		if err != nil {
			out <- err.Error()
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		out <- fmt.Sprintf("%d %s", res.StatusCode, b)
	}()
	return out
}

// machineOf is the machine that answered GET / for host through srv.
func machineOf(t *testing.T, srv *httptest.Server, host string) string {
	t.Helper()
	res, body := get(t, srv, host, nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("got %d %q, want a machine's answer", res.StatusCode, body)
	}
	return answeredBy(t, body).Machine
}

// Under its soft limit the nearest machine gets everything; at it, the
// next region takes the overflow; when every machine is over its soft
// limit, the nearest one under its hard limit is used again.
func TestSoftLimitSpillsToNextRegion(t *testing.T) {
	ams := startHolder(t, "ams1", "ams", "127.0.0.2")
	fra := startHolder(t, "fra1", "fra", "127.0.0.3")
	defer ams.letGo()
	defer fra.letGo()
	w := newWorld(t, "ams")
	w.app("shop")
	c := &api.Concurrency{Type: "requests", SoftLimit: 2, HardLimit: 10}
	w.limited("shop", ams.machine, 80, c)
	w.limited("shop", fra.machine, 80, c)
	w.commit()
	srv := w.serve(80)
	const host = "shop.perch.local"

	for range 3 {
		if m := machineOf(t, srv, host); m != "ams1" {
			t.Fatalf("an idle world answered from %s, want the nearest machine ams1", m)
		}
	}
	hold(srv, host)
	hold(srv, host)
	ams.waitHeld(t, 2) // ams1 at its soft limit
	if m := machineOf(t, srv, host); m != "fra1" {
		t.Fatalf("with ams1 at its soft limit, %s answered; want fra1", m)
	}
	hold(srv, host)
	hold(srv, host)
	fra.waitHeld(t, 2) // the spill-over went to fra1, now at its soft limit too
	for range 3 {
		if m := machineOf(t, srv, host); m != "ams1" {
			t.Fatalf("with every machine at its soft limit, %s answered; want the nearest, ams1", m)
		}
	}
}

// Among the machines of one region, a busy one is passed over for an idle
// one; equally loaded ones take turns.
func TestLeastLoadedMachineFirst(t *testing.T) {
	a := startHolder(t, "a", "ams", "127.0.0.2")
	b := startHolder(t, "b", "ams", "127.0.0.3")
	defer a.letGo()
	defer b.letGo()
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", a.machine, 80, api.StateStarted)
	w.place("shop", b.machine, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	seen := map[string]int{}
	for range 6 {
		seen[machineOf(t, srv, "shop.perch.local")]++
	}
	if seen["a"] != 3 || seen["b"] != 3 {
		t.Errorf("idle machines answered %v, want 3 each", seen)
	}
	hold(srv, "shop.perch.local")
	var busy, idle *holder
	select {
	case <-a.held:
		busy, idle = a, b
	case <-b.held:
		busy, idle = b, a
	case <-time.After(5 * time.Second):
		t.Fatal("the held request reached no machine")
	}
	for range 4 {
		if m := machineOf(t, srv, "shop.perch.local"); m != idle.id {
			t.Fatalf("%s answered while %s was busy, want the idle %s", m, busy.id, idle.id)
		}
	}
}

// At the hard limit a request waits for a slot and gets it when one frees,
// in arrival order; when none frees in time it gets 503 and Retry-After.
func TestHardLimitQueuesThen503(t *testing.T) {
	m := startHolder(t, "m1", "ams", "127.0.0.2")
	defer m.letGo()
	// Two edges in front of the one machine, with a short and a long wait.
	edge := func(wait time.Duration) (*Edge, *httptest.Server) {
		e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Limits: Limits{QueueTimeout: wait}})
		if err != nil {
			t.Fatal(err)
		}
		w := &world{t: t, e: e}
		w.app("shop")
		w.limited("shop", m.machine, 80, &api.Concurrency{Type: "connections", SoftLimit: 1, HardLimit: 1})
		w.commit()
		return e, w.serve(80)
	}
	const host = "shop.perch.local"

	_, srv := edge(300 * time.Millisecond)
	first := hold(srv, host)
	m.waitHeld(t, 1)
	start := time.Now()
	res, body := get(t, srv, host, nil)
	waited := time.Since(start)
	if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") != "1" || !strings.Contains(body, "hard limit") {
		t.Fatalf("at the hard limit: got %d (Retry-After %q) %q, want 503 with Retry-After 1 naming the hard limit",
			res.StatusCode, res.Header.Get("Retry-After"), body)
	}
	if waited < 250*time.Millisecond {
		t.Errorf("the 503 came after %s, want it after the queue wait of 300ms", waited)
	}
	if m.hits.Load() != 1 {
		t.Errorf("the machine got %d requests, want only the held one", m.hits.Load())
	}

	m.release <- struct{}{} // not close: only the held request goes
	if got := <-first; got != `200 {"machine":"m1"}` {
		t.Fatalf("first request: %s", got)
	}

	// Now queued requests get the slot in turn: the held request finishes
	// while two others wait.
	e, srv := edge(10 * time.Second)
	queued := func() int { return e.route(dest{host, 80}).q.len() }
	first = hold(srv, host)
	m.waitHeld(t, 1)
	second, third := hold(srv, host), make(chan string, 1)
	waitFor(t, "the second request to queue", func() bool { return queued() == 1 })
	go func() {
		res, body := get(t, srv, host, nil)
		third <- fmt.Sprintf("%d %s", res.StatusCode, body)
	}()
	waitFor(t, "the third request to queue", func() bool { return queued() == 2 })
	m.release <- struct{}{}
	if got := <-first; got != `200 {"machine":"m1"}` {
		t.Fatalf("first request: %s", got)
	}
	m.waitHeld(t, 1) // the second, first in line, got the slot
	select {
	case got := <-third:
		t.Fatalf("the third request finished (%s) while the second held the only slot", got)
	case <-time.After(100 * time.Millisecond):
	}
	m.letGo()
	if got := <-second; got != `200 {"machine":"m1"}` {
		t.Errorf("second request: %s", got)
	}
	if got := <-third; got != `200 {"machine":"m1"}` {
		t.Errorf("third request: %s", got)
	}
	if n := queued(); n != 0 {
		t.Errorf("%d requests still queued", n)
	}
}

// A machine that leaves the rotation while requests wait for it does not
// strand them: they go to a machine that appears.
func TestQueuedRequestTakesNewMachine(t *testing.T) {
	m := startHolder(t, "m1", "ams", "127.0.0.2")
	defer m.letGo()
	w := newWorld(t, "ams")
	w.app("shop")
	c := &api.Concurrency{SoftLimit: 1, HardLimit: 1}
	w.limited("shop", m.machine, 80, c)
	w.commit()
	srv := w.serve(80)
	hold(srv, "shop.perch.local")
	m.waitHeld(t, 1)
	waiting := make(chan string, 1)
	go func() {
		res, body := get(t, srv, "shop.perch.local", nil)
		waiting <- fmt.Sprintf("%d %s", res.StatusCode, body)
	}()
	waitFor(t, "the request to queue", func() bool { return w.e.route(dest{"shop.perch.local", 80}).q.len() == 1 })
	w.limited("shop", startMachine(t, "m2", "ams", "127.0.0.3", nil), 80, c)
	w.commit()
	select {
	case got := <-waiting:
		if !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"m2"`) {
			t.Errorf("queued request: %s, want m2's answer", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the queued request did not move to the new machine")
	}
}

func TestLimitsOf(t *testing.T) {
	for _, tc := range []struct {
		c          *api.Concurrency
		soft, hard int32
	}{
		{nil, noLimit, noLimit},
		{&api.Concurrency{SoftLimit: 20, HardLimit: 25}, 20, 25},
		{&api.Concurrency{HardLimit: 25}, 25, 25},
		{&api.Concurrency{SoftLimit: 20}, 20, noLimit},
		{&api.Concurrency{SoftLimit: 30, HardLimit: 25}, 25, 25},
	} {
		if soft, hard := limitsOf(tc.c); soft != tc.soft || hard != tc.hard {
			t.Errorf("limitsOf(%+v) = %d, %d; want %d, %d", tc.c, soft, hard, tc.soft, tc.hard)
		}
	}
}

// Many clients against machines with a hard limit: every request is
// answered, and no machine ever has more than its hard limit in flight.
func TestHardLimitNeverPassed(t *testing.T) {
	const hard, clients, each = 2, 20, 5
	var mu sync.Mutex
	inFlight, most := map[string]int{}, 0
	slow := func(id string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			inFlight[id]++
			most = max(most, inFlight[id])
			mu.Unlock()
			time.Sleep(2 * time.Millisecond) // a machine doing some work
			mu.Lock()
			inFlight[id]--
			mu.Unlock()
		}
	}
	w := newWorld(t, "ams")
	w.app("shop")
	c := &api.Concurrency{SoftLimit: 1, HardLimit: hard}
	w.limited("shop", startMachine(t, "a", "ams", "127.0.0.2", slow("a")), 80, c)
	w.limited("shop", startMachine(t, "b", "fra", "127.0.0.3", slow("b")), 80, c)
	w.commit()
	srv := w.serve(80)

	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequest("GET", srv.URL+"/", nil)
				req.Host = "shop.perch.local"
				res, err := srv.Client().Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Errorf("status %d", res.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	if most > hard {
		t.Errorf("a machine had %d requests in flight, over its hard limit of %d", most, hard)
	}
	if q := w.e.route(dest{"shop.perch.local", 80}).q.len(); q != 0 {
		t.Errorf("%d requests left in the queue", q)
	}
}

// A request waiting at the hard limit is woken only once the table that
// may have room for it is published: woken while the table is merely
// built, it would pick from the old, full routes, wait again, and
// nothing would wake it (it then got 503 though a machine had joined).
func TestQueueWokenAfterTheTableIsPublished(t *testing.T) {
	m := startHolder(t, "m1", "ams", "127.0.0.2")
	defer m.letGo()
	w := newWorld(t, "ams")
	w.app("shop")
	w.limited("shop", m.machine, 80, &api.Concurrency{SoftLimit: 1, HardLimit: 1})
	w.commit()
	q := w.e.route(dest{"shop.perch.local", 80}).q
	wt := &waiter{ch: make(chan struct{}, 1)}
	q.enqueue(wt)

	tb := w.e.table
	tb.mu.Lock()
	tb.build() // what commit does before it publishes
	tb.mu.Unlock()
	select {
	case <-wt.ch:
		t.Fatal("the waiter was woken by a table that is built but not yet published")
	default:
	}
	w.commit()
	select {
	case <-wt.ch:
	default:
		t.Fatal("the waiter was not woken when the new table was published")
	}
}
