package edge

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// tWriter sends log lines to t.Log until the test ends; goroutines that
// log a little later (a closing listener) are not an error.
type tWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// machine is a fake machine: an HTTP server on a loopback address that
// answers with what it received.
type machine struct {
	id, region string
	ip         string
	port       int
	hits       atomic.Int64
	srv        *httptest.Server
}

// echo is what a fake machine answers.
type echo struct {
	Machine string      `json:"machine"`
	Host    string      `json:"host"`
	Headers http.Header `json:"headers"`
}

// startMachine runs a fake machine on ip (a 127.0.0.0/8 address) and a free
// port. handler may be nil for the echo answer.
func startMachine(t testing.TB, id, region, ip string, handler http.HandlerFunc) *machine {
	t.Helper()
	m := &machine{id: id, region: region, ip: ip}
	if handler == nil {
		handler = func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set(hdrRequestID, "spoofed-by-app")
			w.Header().Set("Server", "gunicorn")
			_ = json.NewEncoder(w).Encode(echo{Machine: id, Host: r.Host, Headers: r.Header})
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listen for fake machine %s: %v", id, err)
	}
	m.port = ln.Addr().(*net.TCPAddr).Port
	m.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.hits.Add(1)
		handler(w, r)
	}))
	m.srv.Listener.Close()
	m.srv.Listener = ln
	m.srv.Start()
	t.Cleanup(m.srv.Close)
	return m
}

// deadMachine is a machine whose address refuses connections.
func deadMachine(t testing.TB, id, region, ip string) *machine {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return &machine{id: id, region: region, ip: ip, port: port}
}

// world fills an edge's table the way the store's watches would.
type world struct {
	t *testing.T
	e *Edge
}

func newWorld(t *testing.T, region string) *world {
	t.Helper()
	return newWorldLog(t, region, testLog(t))
}

func newWorldLog(t *testing.T, region string, log *slog.Logger) *world {
	t.Helper()
	e, err := newEdge(Config{Region: region, HostID: "h-" + region, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, e: e}
}

func (w *world) host(region, status string) {
	w.e.table.setHost("h-"+region, api.Host{ID: "h-" + region, Region: region, Status: status})
}

func (w *world) app(name string, hostnames ...string) {
	w.e.table.setApp(name, api.App{Name: name, Hostnames: hostnames})
}

// place puts m in app with one HTTP service on public port, desired
// started, in state; the host of its region is made up if unknown.
func (w *world) place(app string, m *machine, port int, state string) {
	if _, ok := w.e.table.hosts["h-"+m.region]; !ok {
		w.host(m.region, "up")
	}
	key := store.MachineKey(app, m.id)
	w.e.table.setMachine(key, store.MachineSpec{
		ID: m.id, App: app, Region: m.region, HostID: "h-" + m.region, PrivateIP: m.ip,
		Desired: store.DesireStarted,
		Config: api.MachineConfig{Services: []api.Service{{
			Protocol: "tcp", InternalPort: m.port,
			Ports: []api.Port{{Port: port, Handlers: []string{"http"}}},
		}}},
	})
	w.state(app, m, state)
}

func (w *world) state(app string, m *machine, state string) {
	w.e.table.setStatus(store.MachineKey(app, m.id), store.MachineStatus{ID: m.id, App: app, HostID: "h-" + m.region, State: state, Ready: state == api.StateStarted})
}

func (w *world) commit() { w.e.table.commit() }

// serve puts the edge's handler for public port behind a test server.
func (w *world) serve(port int) *httptest.Server {
	return serveEdge(w.t, w.e, port)
}

// get sends GET / with Host host through srv.
func get(t testing.TB, srv *httptest.Server, host string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range header {
		req.Header[k] = v
	}
	return do(t, srv.Client(), req)
}

func do(t testing.TB, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", req.Method, req.URL, req.Host, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(body)
}

// answeredBy is the machine that answered an echo body, or "".
func answeredBy(t testing.TB, body string) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("answer is not a machine's echo: %q", body)
	}
	return e
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run runs e until the test ends.
func run(t testing.TB, e *Edge) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.Run(ctx); err != nil {
			t.Errorf("edge run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func httptestServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}
