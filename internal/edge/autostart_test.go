package edge

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// hostStarter plays the hosts' agents for the edge's table: a start
// writes the spec (desired started, next generation), the host reports
// starting, and after boot it reports started and ready, each change
// committed as the watches would. fail makes every start fail.
type hostStarter struct {
	w    *world
	boot time.Duration
	fail error

	mu    sync.Mutex
	calls []Target
}

func (s *hostStarter) StartMachine(_ context.Context, t Target) error {
	s.mu.Lock()
	s.calls = append(s.calls, t)
	s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	key := store.MachineKey(t.App, t.MachineID)
	tb := s.w.e.table
	tb.mu.Lock()
	m := tb.machines[key]
	m.Desired, m.Generation = store.DesireStarted, m.Generation+1
	tb.machines[key] = m
	tb.status[key] = store.MachineStatus{ID: m.ID, App: m.App, HostID: m.HostID, State: api.StateStarting, Generation: m.Generation}
	tb.mu.Unlock()
	tb.commit()
	go func() {
		time.Sleep(s.boot) // the machine booting, not the test waiting
		tb.setStatus(key, store.MachineStatus{ID: m.ID, App: m.App, HostID: m.HostID, State: api.StateStarted, Ready: true, Generation: m.Generation})
		tb.commit()
	}()
	return nil
}

func (s *hostStarter) started() []Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Target(nil), s.calls...)
}

// asleep places m in app like place, but stopped (or suspended) with
// autostop and autostart on, at generation 1.
func (w *world) asleep(app string, m *machine, state string, ports ...api.Port) {
	if _, ok := w.e.table.hosts["h-"+m.region]; !ok {
		w.host(m.region, "up")
	}
	desired := store.DesireStopped
	if state == api.StateSuspended {
		desired = store.DesireSuspended
	}
	key := store.MachineKey(app, m.id)
	w.e.table.setMachine(key, store.MachineSpec{
		ID: m.id, App: app, Region: m.region, HostID: "h-" + m.region, PrivateIP: m.ip,
		Desired: desired, Generation: 1,
		Config: api.MachineConfig{Services: []api.Service{{
			Protocol: "tcp", InternalPort: m.port, Ports: ports, Autostop: api.AutostopStop,
		}}},
	})
	w.e.table.setStatus(key, store.MachineStatus{ID: m.id, App: app, HostID: "h-" + m.region, State: state, Generation: 1})
}

// TestAutostartHoldsAndWakesOne: two hundred concurrent requests for an
// app whose machines are all stopped are held, exactly one machine is
// started, the nearest (this edge's region, suspended before stopped),
// and every request is answered by it.
func TestAutostartHoldsAndWakesOne(t *testing.T) {
	w := newWorld(t, "iad")
	s := &hostStarter{w: w, boot: 150 * time.Millisecond}
	w.e.cfg.Starter = s
	w.app("zz")
	http80 := api.Port{Port: 80, Handlers: []string{"http"}}
	w.asleep("zz", startMachine(t, "a1", "iad", "127.0.0.2", nil), api.StateStopped, http80)
	w.asleep("zz", startMachine(t, "a2", "iad", "127.0.0.3", nil), api.StateSuspended, http80)
	w.asleep("zz", startMachine(t, "f1", "fra", "127.0.0.4", nil), api.StateSuspended, http80)
	w.commit()
	srv := w.serve(80)

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan string, n)
	by := make(chan string, n)
	start := time.Now()
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", srv.URL+"/", nil)
			req.Host = "zz.perch.local"
			res, err := srv.Client().Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 {
				errs <- res.Status + " " + string(body)
				return
			}
			by <- answeredBy(t, string(body)).Machine
		})
	}
	wg.Wait()
	close(errs)
	close(by)
	for e := range errs {
		t.Errorf("request failed: %s", e)
	}
	answered := map[string]int{}
	for m := range by {
		answered[m]++
	}
	calls := s.started()
	t.Logf("%d requests held and answered in %v: %v; starts %v", n, time.Since(start).Round(time.Millisecond), answered, calls)
	if len(calls) != 1 || calls[0].MachineID != "a2" || !calls[0].Local {
		t.Fatalf("starts %+v; want exactly one, of a2 (this region, this host, suspended)", calls)
	}
	if answered["a2"] != n {
		t.Errorf("answered by %v; want all %d by a2", answered, n)
	}
	// Now that a2 is ready, a request goes straight there.
	if res, _ := get(t, srv, "zz.perch.local", nil); res.StatusCode != 200 || len(s.started()) != 1 {
		t.Errorf("after the start: %s, %d starts; want 200 and still 1", res.Status, len(s.started()))
	}
}

// TestAutostartFailureAnswers503: when no machine can be started the held
// request gets a 503 saying why, and the next request tries again; when a
// started machine never becomes ready, the hold ends at StartTimeout.
func TestAutostartFailureAnswers503(t *testing.T) {
	w := newWorld(t, "iad")
	s := &hostStarter{w: w, fail: errors.New("host h-iad: out of memory")}
	w.e.cfg.Starter = s
	w.app("zz")
	w.asleep("zz", startMachine(t, "a1", "iad", "127.0.0.2", nil), api.StateStopped, api.Port{Port: 80, Handlers: []string{"http"}})
	w.commit()
	srv := w.serve(80)
	for i := 1; i <= 2; i++ {
		res, body := get(t, srv, "zz.perch.local", nil)
		if res.StatusCode != 503 || !strings.Contains(body, "none could be started in time") || !strings.Contains(body, "out of memory") || res.Header.Get("Retry-After") == "" {
			t.Errorf("request %d: %s %q; want a 503 with Retry-After saying the start failed and why", i, res.Status, body)
		}
		if got := len(s.started()); got != i {
			t.Errorf("after request %d: %d starts; want %d", i, got, i)
		}
	}

	w.e.limits.StartTimeout = 300 * time.Millisecond
	s.fail, s.boot = nil, time.Hour // started, never ready
	from := time.Now()
	res, body := get(t, srv, "zz.perch.local", nil)
	if took := time.Since(from); res.StatusCode != 503 || !strings.Contains(body, "did not become ready within 300ms") || took > 5*time.Second {
		t.Errorf("a machine that never gets ready: %s %q after %v; want a 503 after the 300ms start timeout", res.Status, body, took)
	}
}

// TestAutostartRawTCP: a raw TCP connection is held like a request, and
// reaches the machine once it is ready.
func TestAutostartRawTCP(t *testing.T) {
	w := newCertWorld(t, nil)
	s := &hostStarter{w: w, boot: 100 * time.Millisecond}
	w.e.cfg.Starter = s
	port := freePort(t)
	w.app("db")
	w.asleep("db", startTCP(t, "d1", "ams", "127.0.0.2", echoTCP), api.StateStopped, tcpPort(port))
	addr := w.listening(port)

	c := dialEdge(t, addr)
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "pingbye" {
		t.Fatalf("through the held connection: %q, %v; want \"pingbye\"", got, err)
	}
	if calls := s.started(); len(calls) != 1 || calls[0].MachineID != "d1" {
		t.Errorf("starts %+v; want one of d1", calls)
	}
}

// TestAutostartExitedMachine: a machine that exited by itself (meant to be
// started, reported stopped for that generation) is started for a
// request like a stopped one; one that failed is not.
func TestAutostartExitedMachine(t *testing.T) {
	w := newWorld(t, "iad")
	s := &hostStarter{w: w, boot: 50 * time.Millisecond}
	w.e.cfg.Starter = s
	w.app("zz")
	w.app("bad")
	http80 := api.Port{Port: 80, Handlers: []string{"http"}}
	for app, state := range map[string]string{"zz": api.StateStopped, "bad": api.StateFailed} {
		m := startMachine(t, "m-"+app, "iad", "127.0.0.2", nil)
		w.asleep(app, m, state, http80)
		key := store.MachineKey(app, m.id)
		spec := w.e.table.machines[key]
		spec.Desired = store.DesireStarted
		w.e.table.setMachine(key, spec)
	}
	w.commit()
	srv := w.serve(80)
	if res, body := get(t, srv, "zz.perch.local", nil); res.StatusCode != 200 {
		t.Errorf("exited machine: %s %q; want it started and answering", res.Status, body)
	}
	if res, _ := get(t, srv, "bad.perch.local", nil); res.StatusCode != 502 {
		t.Errorf("failed machine: %s; want 502 at once (no start)", res.Status)
	}
	if calls := s.started(); len(calls) != 1 || calls[0].MachineID != "m-zz" {
		t.Errorf("starts %+v; want only m-zz", calls)
	}
}

// TestAutostartOverSoftLimit: a request that finds every started machine
// over its soft limit is not held: it goes to one of them (under its hard
// limit) while the edge starts a stopped machine in the background, once.
func TestAutostartOverSoftLimit(t *testing.T) {
	w := newWorld(t, "iad")
	s := &hostStarter{w: w, boot: 10 * time.Millisecond}
	w.e.cfg.Starter = s
	w.app("zz")
	release := make(chan struct{})
	busy := startMachine(t, "busy", "iad", "127.0.0.2", func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(rw, "busy")
	})
	w.place("zz", busy, 80, api.StateStarted)
	key := store.MachineKey("zz", "busy")
	spec := w.e.table.machines[key]
	spec.Config.Services[0].Concurrency = &api.Concurrency{Type: "requests", SoftLimit: 1, HardLimit: 10}
	spec.Config.Services[0].Autostop = api.AutostopStop
	w.e.table.setMachine(key, spec)
	w.asleep("zz", startMachine(t, "spare", "iad", "127.0.0.3", nil), api.StateStopped, api.Port{Port: 80, Handlers: []string{"http"}})
	w.commit()
	srv := w.serve(80)

	slow := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("GET", srv.URL+"/slow", nil)
		req.Host = "zz.perch.local"
		res, err := srv.Client().Do(req)
		if err != nil {
			slow <- 0
			return
		}
		res.Body.Close()
		slow <- res.StatusCode
	}()
	waitFor(t, "the slow request in flight on busy", func() bool { return w.e.table.book.inflight("zz", "busy") == 1 })
	if res, body := get(t, srv, "zz.perch.local", nil); res.StatusCode != 200 || body != "busy" {
		t.Errorf("request over the soft limit: %s %q; want busy's answer at once", res.Status, body)
	}
	waitFor(t, "spare started in the background", func() bool { return len(s.started()) == 1 })
	if calls := s.started(); calls[0].MachineID != "spare" {
		t.Errorf("started %+v; want spare", calls)
	}
	close(release)
	if code := <-slow; code != 200 {
		t.Errorf("slow request: %d", code)
	}
	waitFor(t, "spare in rotation", func() bool {
		return len(w.e.Snapshot().Candidates("zz.perch.local", 80)) == 2
	})
	if n := len(s.started()); n != 1 {
		t.Errorf("%d starts; want 1", n)
	}
}
