package health

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// app is a real HTTP server on loopback whose health answer a test can
// change, and which remembers the last health request it got.
type app struct {
	srv  *httptest.Server
	host string
	port int

	mu     sync.Mutex
	code   int
	body   string
	delay  time.Duration
	last   *http.Request
	checks int
}

func newApp(t *testing.T, tlsServer bool) *app {
	t.Helper()
	a := &app{code: 200, body: "ok"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.last, a.checks = r.Clone(context.Background()), a.checks+1
		code, body, delay := a.code, a.body, a.delay
		a.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		if code == http.StatusFound {
			http.Redirect(w, r, "/elsewhere", code)
			return
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	})
	a.srv = httptest.NewUnstartedServer(h)
	// Failed handshakes are what some tests are about; keep them quiet.
	a.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsServer {
		a.srv.StartTLS()
	} else {
		a.srv.Start()
	}
	t.Cleanup(a.srv.Close)
	addr := a.srv.Listener.Addr().(*net.TCPAddr)
	a.host, a.port = addr.IP.String(), addr.Port
	return a
}

func (a *app) answer(code int, body string) {
	a.mu.Lock()
	a.code, a.body = code, body
	a.mu.Unlock()
}

func (a *app) slow(d time.Duration) {
	a.mu.Lock()
	a.delay = d
	a.mu.Unlock()
}

func (a *app) lastRequest() *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

func (a *app) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.checks
}

func mustParse(t *testing.T, c api.Check) *Check {
	t.Helper()
	k, err := Parse(c)
	if err != nil {
		t.Fatalf("Parse(%+v): %v", c, err)
	}
	return k
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestTCPCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	r := mustParse(t, api.Check{Type: "tcp", Port: port}).Probe(context.Background(), "127.0.0.1")
	want := "connected to 127.0.0.1:" + strconv.Itoa(port)
	if !r.OK || r.Output != want {
		t.Errorf("listening port: %+v, want passing %q", r, want)
	}

	dead := closedPort(t)
	r = mustParse(t, api.Check{Type: "tcp", Port: dead}).Probe(context.Background(), "127.0.0.1")
	if r.OK || !strings.Contains(r.Output, "connection refused") || !strings.Contains(r.Output, strconv.Itoa(dead)) {
		t.Errorf("closed port: %+v, want failing, saying the connection to port %d was refused", r, dead)
	}
}

func TestHTTPCheck(t *testing.T) {
	a := newApp(t, false)
	check := mustParse(t, api.Check{Type: "http", Port: a.port, Path: "/health", Timeout: "300ms", Interval: "1s"})
	probe := func() Result { return check.Probe(context.Background(), a.host) }

	if r := probe(); !r.OK || r.Output != "GET /health: 200 OK" {
		t.Errorf("200: %+v, want passing with \"GET /health: 200 OK\"", r)
	}
	a.answer(500, "database down\nstack trace follows")
	if r := probe(); r.OK || r.Output != "GET /health: 500 Internal Server Error: database down" {
		t.Errorf("500: %+v, want failing with the status and the body's first line", r)
	}
	a.answer(http.StatusFound, "")
	if r := probe(); r.OK || !strings.Contains(r.Output, "302 Found") {
		t.Errorf("redirect: %+v, want failing on the 302 itself (redirects are not followed)", r)
	}
	if got := a.lastRequest().URL.Path; got != "/health" {
		t.Errorf("the redirect was followed to %s", got)
	}
	a.answer(204, "")
	if r := probe(); !r.OK {
		t.Errorf("204: %+v, want passing (any 2xx)", r)
	}

	// An app that does not answer in time fails the check when the
	// timeout ends, not later.
	a.slow(5 * time.Second)
	start := time.Now()
	r := probe()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("a hanging app held the check for %s; timeout is 300ms", took)
	}
	if r.OK || r.Output != "GET /health: no answer within 300ms" {
		t.Errorf("hanging app: %+v, want failing with \"no answer within 300ms\"", r)
	}

	r = mustParse(t, api.Check{Type: "http", Port: closedPort(t)}).Probe(context.Background(), "127.0.0.1")
	if r.OK || !strings.HasPrefix(r.Output, "GET /: ") || !strings.Contains(r.Output, "connection refused") {
		t.Errorf("nothing listening: %+v, want failing with connection refused", r)
	}
}

func TestHTTPCheckMethodAndHeaders(t *testing.T) {
	a := newApp(t, false)
	check := mustParse(t, api.Check{
		Type: "http", Port: a.port, Method: "post", Path: "/status?deep=1",
		Headers: map[string][]string{"X-Token": {"s3cret"}, "Host": {"app.internal"}, "Accept": {"text/plain", "application/json"}},
	})
	if r := check.Probe(context.Background(), a.host); !r.OK {
		t.Fatalf("probe: %+v", r)
	}
	req := a.lastRequest()
	if req.Method != "POST" || req.URL.Path != "/status" || req.URL.RawQuery != "deep=1" {
		t.Errorf("app got %s %s, want POST /status?deep=1", req.Method, req.URL)
	}
	if req.Header.Get("X-Token") != "s3cret" || req.Host != "app.internal" {
		t.Errorf("app got X-Token %q and Host %q, want the check's headers", req.Header.Get("X-Token"), req.Host)
	}
	if got := req.Header.Values("Accept"); len(got) != 2 {
		t.Errorf("app got Accept %q, want both values", got)
	}
}

func TestHTTPSCheck(t *testing.T) {
	a := newApp(t, true)
	// The app's certificate is its own (self-signed): only
	// tls_skip_verify lets the check through.
	r := mustParse(t, api.Check{Type: "http", Port: a.port, Protocol: "https", TLSSkipVerify: true}).Probe(context.Background(), a.host)
	if !r.OK {
		t.Errorf("https with tls_skip_verify: %+v, want passing", r)
	}
	r = mustParse(t, api.Check{Type: "http", Port: a.port, Protocol: "https"}).Probe(context.Background(), a.host)
	if r.OK || !strings.Contains(r.Output, "certificate") {
		t.Errorf("https verifying the app's self-signed certificate: %+v, want failing on the certificate", r)
	}
	// Plain HTTP to a TLS port fails too.
	r = mustParse(t, api.Check{Type: "http", Port: a.port}).Probe(context.Background(), a.host)
	if r.OK {
		t.Errorf("http to a TLS port: %+v, want failing", r)
	}
}

func TestParse(t *testing.T) {
	k := mustParse(t, api.Check{Type: "http", Port: 8080})
	if k.Interval != DefaultInterval || k.Timeout != DefaultTimeout || k.GracePeriod != DefaultGracePeriod || k.Method != "GET" || k.Path != "/" || k.HTTPS {
		t.Errorf("defaults: %+v", k)
	}
	for _, tc := range []struct {
		c    api.Check
		want string
	}{
		{api.Check{Type: "udp", Port: 1}, `type "udp" is not "tcp" or "http"`},
		{api.Check{Type: "tcp"}, "port must be 1-65535, got 0"},
		{api.Check{Type: "tcp", Port: 1, Interval: "often"}, `interval "often" is not a duration`},
		{api.Check{Type: "tcp", Port: 1, Timeout: "-1s"}, `timeout "-1s" is not a duration`},
		{api.Check{Type: "tcp", Port: 1, GracePeriod: "1 minute"}, `grace_period "1 minute" is not a duration`},
		{api.Check{Type: "tcp", Port: 1, Interval: "0s"}, "must be more than 0"},
		{api.Check{Type: "http", Port: 1, Method: "FETCH"}, `method "FETCH" is not one of GET`},
		{api.Check{Type: "http", Port: 1, Path: "health"}, `path "health" must start with /`},
		{api.Check{Type: "http", Port: 1, Protocol: "h2"}, `protocol "h2" is not "http" or "https"`},
		{api.Check{Type: "http", Port: 1, Headers: map[string][]string{"Bad Name": {"x"}}}, `header name "Bad Name" is not valid`},
		{api.Check{Type: "http", Port: 1, Headers: map[string][]string{"X": {"a\r\nInjected: 1"}}}, "header X has a value with a control character"},
	} {
		if _, err := Parse(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%+v) = %v, want an error saying %q", tc.c, err, tc.want)
		}
	}
	if err := Validate(api.Check{Type: "tcp", Port: 1, Interval: "100ms", Timeout: "50ms"}); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("Validate(100ms interval) = %v, want too short", err)
	}
	if err := Validate(api.Check{Type: "tcp", Port: 1, Interval: "1s", Timeout: "500ms"}); err != nil {
		t.Errorf("Validate(1s interval) = %v", err)
	}
	// Fly accepts a timeout longer than the interval (flyctl does not even
	// warn); the monitor never runs two probes of a check at once.
	if k, err := Parse(api.Check{Type: "tcp", Port: 1, Interval: "5s", Timeout: "10s"}); err != nil || k.Timeout != 10*time.Second {
		t.Errorf("Parse(timeout 10s > interval 5s) = %+v, %v; want it accepted with its timeout", k, err)
	}
}

func TestMachineChecks(t *testing.T) {
	mc := api.MachineConfig{Services: []api.Service{
		{InternalPort: 8080, Checks: []api.Check{{Type: "tcp"}, {Type: "http", Path: "/health"}}},
		{InternalPort: 9000},
		{InternalPort: 5432, Checks: []api.Check{{Type: "tcp", Name: "db"}, {Type: "tcp", Port: 5433}}},
	}}
	var got []string
	for _, c := range MachineChecks(mc) {
		got = append(got, c.Name+"@"+strconv.Itoa(c.Port))
	}
	want := "servicecheck-00-tcp-8080@8080 servicecheck-01-http-8080@8080 db@5432 servicecheck-03-tcp-5433@5433"
	if strings.Join(got, " ") != want {
		t.Errorf("MachineChecks = %v, want %s", got, want)
	}
	if mc.Services[0].Checks[0].Name != "" {
		t.Error("MachineChecks changed the config it was given")
	}
}
