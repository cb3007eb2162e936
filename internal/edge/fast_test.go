package edge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// fastWorld is a world whose edge runs the fast path, whatever the run's
// mode: these tests are about the fast path itself.
func fastWorld(t *testing.T) *world {
	t.Helper()
	e, err := New(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), HTTP1: HTTP1Fast})
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, e: e}
}

// rawExchange writes raw to a new connection to srv and reads answers
// until the connection closes or want answers came.
func rawExchange(t *testing.T, addr, raw string, want int) []*http.Response {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*http.Response
	for len(out) < want {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		b, _ := io.ReadAll(res.Body)
		res.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, res)
	}
	return out
}

// The fast path serves requests without a body, and those whose small
// body came with the head, itself, pipelined ones in order; the rest
// (a chunked body here) goes with the connection to net/http, which
// answers it on the same connection.
func TestFastPathServesAndHandsOff(t *testing.T) {
	w := fastWorld(t)
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(rw, "%s %s %s via=%s", r.Method, r.URL.Path, b, r.Header.Get("Via"))
	}), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	addr := strings.TrimPrefix(srv.URL, "http://")

	const h = "Host: shop.perch.local\r\n"
	raw := "GET /one HTTP/1.1\r\n" + h + "\r\n" +
		"POST /two HTTP/1.1\r\n" + h + "Content-Length: 5\r\n\r\nhello" +
		"POST /three HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" +
		"GET /four HTTP/1.1\r\n" + h + "Connection: close\r\n\r\n"
	res := rawExchange(t, addr, raw, 4)
	want := []string{"GET /one  via=1.1 perch", "POST /two hello via=1.1 perch", "POST /three abc via=1.1 perch", "GET /four  via=1.1 perch"}
	if len(res) != len(want) {
		t.Fatalf("got %d answers on one connection, want %d", len(res), len(want))
	}
	for i, r := range res {
		b, _ := io.ReadAll(r.Body)
		if r.StatusCode != 200 || string(b) != want[i] {
			t.Errorf("answer %d: %d %q, want 200 %q", i, r.StatusCode, b, want[i])
		}
		if r.Header.Get(hdrRequestID) == "" || r.Header.Get("Server") != serverName {
			t.Errorf("answer %d has %s %q and Server %q", i, hdrRequestID, r.Header.Get(hdrRequestID), r.Header.Get("Server"))
		}
	}
	native := counter(t, w.e, "perch_edge_http1_fast_requests_total", map[string]string{"path": "native"})
	handed := counter(t, w.e, "perch_edge_http1_fast_requests_total", map[string]string{"path": "handed_off"})
	if native != 2 || handed != 1 {
		t.Errorf("fast path served %v requests and handed off %v connections, want 2 and 1 (the chunked body's)", native, handed)
	}

	// On a kept-alive connection, whose idle wait holds only a small
	// buffer: a body that came with its head, larger than that buffer.
	big := strings.Repeat("b", 3000)
	c := srv.Client()
	for i, body := range []string{"", big} {
		req, _ := http.NewRequest("POST", srv.URL+"/kept", strings.NewReader(body))
		req.Host = "shop.perch.local"
		res, got := do(t, c, req)
		if want := "POST /kept " + body + " via=1.1 perch"; res.StatusCode != 200 || got != want {
			t.Fatalf("POST %d on a kept connection: %d %q, want 200 %q", i, res.StatusCode, got, want)
		}
	}
	if n := counter(t, w.e, "perch_edge_http1_fast_requests_total", map[string]string{"path": "native"}); n != native+2 {
		t.Errorf("fast path served %v of the two POSTs on a kept connection, want both", n-native)
	}
}

// A kept connection to a machine that the machine closed meanwhile does
// not cost a request that must not be sent twice (a POST) its answer:
// the fast path looks before it reuses one.
func TestFastPathSkipsClosedKeptConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				// One answer, kept alive as far as the edge knows, then
				// the machine closes the connection.
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err == nil {
					_, _ = io.Copy(io.Discard, req.Body)
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				c.Close()
				closed.Add(1)
			}()
		}
	}()
	m := &machine{id: "s1", region: "ams", ip: "127.0.0.2", port: ln.Addr().(*net.TCPAddr).Port}
	w := fastWorld(t)
	w.app("shop")
	w.place("shop", m, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	for i := range 3 {
		req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader("x"))
		req.Host = "shop.perch.local"
		res, body := do(t, srv.Client(), req)
		if res.StatusCode != 200 || body != "ok" {
			t.Fatalf("POST %d: %d %q, want 200 ok", i, res.StatusCode, body)
		}
		waitFor(t, "the machine to close its connection", func() bool { return closed.Load() == int64(i+1) })
	}
	if conns.Load() != 3 {
		t.Errorf("machine saw %d connections for 3 POSTs, want 3 (one each)", conns.Load())
	}
}

// The edge's own answers on the fast path: an app with no started machine
// left is answered 502 by the fast path's retries, with the edge's id.
func TestFastPathAnswersUnreachable(t *testing.T) {
	w := fastWorld(t)
	w.app("shop")
	w.place("shop", deadMachine(t, "d1", "ams", "127.0.0.2"), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	res, body := get(t, srv, "shop.perch.local", nil)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(body, "none could be reached (tried 1)") {
		t.Fatalf("got %d %q, want 502 saying the machine could not be reached", res.StatusCode, body)
	}
	if res.Header.Get(hdrRequestID) == "" || !strings.Contains(body, res.Header.Get(hdrRequestID)) {
		t.Errorf("502 has %s %q; its body should name it: %q", hdrRequestID, res.Header.Get(hdrRequestID), body)
	}
	if native := counter(t, w.e, "perch_edge_http1_fast_requests_total", map[string]string{"path": "native"}); native != 1 {
		t.Errorf("fast path served %v requests, want 1", native)
	}
}

func TestParseHTTP1Mode(t *testing.T) {
	for in, want := range map[string]HTTP1Mode{"fast": HTTP1Fast, "std": HTTP1Std, "": defaultHTTP1} {
		if got, err := ParseHTTP1Mode(in); err != nil || got != want {
			t.Errorf("ParseHTTP1Mode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseHTTP1Mode("quick"); err == nil || !strings.Contains(err.Error(), `"quick"`) || !strings.Contains(err.Error(), "fast") {
		t.Errorf("ParseHTTP1Mode(quick) error %v, want one naming the value and the choices", err)
	}
}

// A request waiting for a slot gives up its place when its client leaves:
// it never reaches the machine (both paths: net/http's background read,
// the fast path's watch of a queued request's connection).
func TestQueuedRequestLeavesWithItsClient(t *testing.T) {
	m := startHolder(t, "m1", "ams", "127.0.0.2")
	defer m.letGo()
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Limits: Limits{QueueTimeout: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	w.app("shop")
	w.limited("shop", m.machine, 80, &api.Concurrency{Type: "requests", SoftLimit: 1, HardLimit: 1})
	w.commit()
	srv := w.serve(80)
	const host = "shop.perch.local"
	queued := func() int { return e.route(dest{host, 80}).q.len() }

	first := hold(srv, host)
	m.waitHeld(t, 1)
	c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /second HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second request to queue", func() bool { return queued() == 1 })
	c.Close()
	waitFor(t, "the second request to leave the queue with its client", func() bool { return queued() == 0 })
	m.letGo()
	if got := <-first; got != `200 {"machine":"m1"}` {
		t.Fatalf("first request: %s", got)
	}
	if got := machineOf(t, srv, host); got != "m1" || m.hits.Load() != 2 {
		t.Errorf("the machine got %d requests (the held one, then a new one), want 2: the client that left sent nothing on", m.hits.Load())
	}
}

// The edge closes its kept connections to a machine once they have been
// idle for BackendIdleTimeout, without a further request: on both paths.
// A kept connection to another host's machine is an open relay connection
// there, which that host's autostop counts as activity, so one kept after
// the last request would keep the machine from ever going idle (CI's
// TestAutoscaleByOrigin with the fast path, before the pool's timer).
func TestIdleMachineConnectionsClosed(t *testing.T) {
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Limits: Limits{BackendIdleTimeout: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	w.app("shop")
	var open atomic.Int32
	m := startTCP(t, "s1", "ams", "127.0.0.2", func(c net.Conn) {
		open.Add(1)
		defer open.Add(-1)
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	w.place("shop", m, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	// Concurrent requests: the edge keeps several connections.
	done := make(chan error, 8)
	for range 8 {
		go func() {
			for range 5 {
				res, body := get(t, srv, "shop.perch.local", nil)
				if res.StatusCode != 200 || body != "ok" {
					done <- fmt.Errorf("answer %d %q", res.StatusCode, body)
					return
				}
			}
			done <- nil
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if m.hits.Load() == 0 {
		t.Fatal("the machine got no connection")
	}
	kept := open.Load()
	waitFor(t, "the edge to close its idle connections to the machine", func() bool { return open.Load() == 0 })
	t.Logf("%d connection(s) made, %d kept after the requests, all closed once idle", m.hits.Load(), kept)
}
