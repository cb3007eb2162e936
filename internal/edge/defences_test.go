package edge

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// listeningEdge runs an edge with limits on 127.0.0.1, serving app "shop"
// (one echo machine) on a free port, and returns the port's address.
func listeningEdge(t *testing.T, limits Limits) (*world, string) {
	t.Helper()
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	port := freePort(t)
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), port, api.StateStarted)
	w.commit()
	run(t, e)
	waitFor(t, "the edge to listen", func() bool { return len(e.Listening()) == 1 })
	return w, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// from is a client whose connections come from source address src.
func from(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func getVia(t *testing.T, c *http.Client, addr string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "shop.perch.local"
	return do(t, c, req)
}

// closedAfter dials addr, sends head, then one more header line every
// 100ms, and reports how long the edge kept the connection open.
func trickle(t *testing.T, addr string, stop <-chan struct{}) (closed <-chan time.Duration) {
	out := make(chan time.Duration, 1)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Errorf("dial: %v", err)
		out <- 0
		return out
	}
	start := time.Now()
	go func() {
		defer c.Close()
		go func() {
			fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: shop.perch.local\r\n")
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					c.Close()
					return
				case <-tick.C:
					if _, err := fmt.Fprint(c, "X-Slow: 1\r\n"); err != nil {
						return
					}
				}
			}
		}()
		io.Copy(io.Discard, c) // returns when the edge closes the connection
		out <- time.Since(start)
	}()
	return out
}

// Slowloris: many connections from one address that send their headers a
// line at a time. The edge keeps at most MaxConnsPerClient of them, cuts
// each off after ReadHeaderTimeout, and serves other clients all along.
func TestSlowlorisDoesNotExhaustEdge(t *testing.T) {
	const conns, perClient = 60, 10
	headerTimeout := time.Second
	w, addr := listeningEdge(t, Limits{ReadHeaderTimeout: headerTimeout, MaxConnsPerClient: perClient})
	stop := make(chan struct{})
	defer close(stop)

	var closed []<-chan time.Duration
	for range conns {
		closed = append(closed, trickle(t, addr, stop))
	}
	// Meanwhile another client is served at once.
	start := time.Now()
	if res, body := getVia(t, from("127.0.0.9"), addr); res.StatusCode != http.StatusOK {
		t.Fatalf("a client during the attack got %d %q", res.StatusCode, body)
	}
	if d := time.Since(start); d > headerTimeout/2 {
		t.Errorf("a client during the attack waited %s", d)
	}

	var early, cutOff int
	for _, ch := range closed {
		select {
		case d := <-ch:
			switch {
			case d < headerTimeout/2:
				early++ // over the per-client cap: closed on accept
			case d < headerTimeout+2*time.Second:
				cutOff++ // trickled until the header timeout
			default:
				t.Errorf("a slow connection lasted %s, past the header timeout of %s", d, headerTimeout)
			}
		case <-time.After(headerTimeout + 5*time.Second):
			t.Fatal("a slow connection is still open well after the header timeout")
		}
	}
	if cutOff > perClient || early < conns-perClient {
		t.Errorf("%d connections were held until the header timeout and %d closed at once; want at most %d held",
			cutOff, early, perClient)
	}
	if n := counter(t, w.e, "perch_edge_rejected_total", map[string]string{"reason": "client_cap"}); n < conns-perClient {
		t.Errorf("perch_edge_rejected_total{reason=client_cap} = %v, want at least %d", n, conns-perClient)
	}
	// The attacker's address is welcome again once its connections went.
	waitFor(t, "127.0.0.1 to be served again", func() bool {
		res, err := from("127.0.0.1").Get("http://" + addr + "/")
		if err != nil {
			return false
		}
		res.Body.Close()
		return true
	})
}

// Past MaxConnsPerClient a client address's connections are closed at
// once; other addresses are not affected, and closing one makes room.
func TestConnectionsPerClientCapped(t *testing.T) {
	_, addr := listeningEdge(t, Limits{MaxConnsPerClient: 3})
	// Three keep-alive connections, each proven accepted by an answer.
	var open []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if status := roundTrip(t, c); status != http.StatusOK {
			t.Fatalf("connection %d: status %d", len(open)+1, status)
		}
		open = append(open, c)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Errorf("a fourth connection from the same address: read %d bytes, %v; want it closed", n, err)
	}
	if res, _ := getVia(t, from("127.0.0.9"), addr); res.StatusCode != http.StatusOK {
		t.Errorf("another address: status %d", res.StatusCode)
	}
	open[0].Close()
	waitFor(t, "room for a new connection", func() bool {
		res, err := from("127.0.0.1").Get("http://" + addr + "/")
		if err == nil {
			res.Body.Close()
		}
		return err == nil
	})
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// roundTrip sends one keep-alive request on c and reads the answer.
func roundTrip(t *testing.T, c net.Conn) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode
}

func TestHeaderSizeLimit(t *testing.T) {
	_, addr := listeningEdge(t, Limits{MaxHeaderBytes: 8 << 10})
	c := from("127.0.0.1")
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = "shop.perch.local"
	req.Header.Set("X-Small", strings.Repeat("a", 2<<10))
	if res, body := do(t, c, req); res.StatusCode != http.StatusOK {
		t.Errorf("2 KiB header: got %d %q", res.StatusCode, body)
	}
	req.Header.Set("X-Big", strings.Repeat("b", 64<<10))
	if res, _ := do(t, c, req); res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB header: got %d, want 431", res.StatusCode)
	}
}

// A keep-alive connection that carries no request for IdleTimeout is
// closed by the edge.
func TestIdleKeepAliveClosed(t *testing.T) {
	idle := 300 * time.Millisecond
	_, addr := listeningEdge(t, Limits{IdleTimeout: idle})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if status := roundTrip(t, c); status != http.StatusOK {
		t.Fatalf("status %d", status)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if d := time.Since(start); err == nil || isTimeout(err) || d < idle-50*time.Millisecond {
		t.Errorf("idle connection: read returned %v after %s; want it closed by the edge after about %s", err, d, idle)
	}
}

// Past MaxConnsPerApp requests in flight, an app's next request gets 503;
// once one finishes there is room again.
func TestRequestsPerAppCapped(t *testing.T) {
	m := startHolder(t, "m1", "ams", "127.0.0.2")
	defer m.letGo()
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Limits: Limits{MaxConnsPerApp: 2}})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	w.app("shop")
	w.place("shop", m.machine, 80, api.StateStarted)
	w.app("other")
	w.place("other", startMachine(t, "o1", "ams", "127.0.0.3", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	first, second := hold(srv, "shop.perch.local"), hold(srv, "shop.perch.local")
	m.waitHeld(t, 2)
	res, body := get(t, srv, "shop.perch.local", nil)
	if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "its cap") {
		t.Errorf("third request: got %d %q, want 503 about the app's cap", res.StatusCode, body)
	}
	if res, _ := get(t, srv, "other.perch.local", nil); res.StatusCode != http.StatusOK {
		t.Errorf("another app: got %d", res.StatusCode)
	}
	m.release <- struct{}{} // one of the two finishes
	select {
	case <-first:
	case <-second:
	}
	if res, body := get(t, srv, "shop.perch.local", nil); res.StatusCode != http.StatusOK {
		t.Errorf("after one finished: got %d %q", res.StatusCode, body)
	}
}

// A client that stops reading an answer is cut off after SendTimeout: the
// edge closes its connection and the machine's, so the app's write fails
// and its slot is free (before, both stayed blocked for as long as the
// client held on). A stream the client keeps reading lasts as long as it
// likes, however much longer than SendTimeout.
func TestClientThatStopsReadingIsCutOff(t *testing.T) {
	send := 300 * time.Millisecond
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t), Limits: Limits{SendTimeout: send}})
	if err != nil {
		t.Fatal(err)
	}
	flooded := make(chan error, 1)
	m := startMachine(t, "s1", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flood": // until a write fails, at most 1 GiB
			buf := make([]byte, 64<<10)
			var err error
			for n := 0; n < 1<<30 && err == nil; n += len(buf) {
				_, err = w.Write(buf)
			}
			flooded <- err
		case "/slow": // ten lines 100 ms apart: a second in all
			for i := range 10 {
				fmt.Fprintf(w, "tick %d\n", i)
				_ = http.NewResponseController(w).Flush()
				time.Sleep(100 * time.Millisecond) // the app's pace, what is tested
			}
		}
	})
	w := &world{t: t, e: e}
	port := freePort(t)
	w.app("shop")
	w.place("shop", m, port, api.StateStarted)
	w.commit()
	run(t, e)
	waitFor(t, "the edge to listen", func() bool { return len(e.Listening()) == 1 })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprint(c, "GET /flood HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now() // the client reads nothing more
	select {
	case err := <-flooded:
		if err == nil {
			t.Fatal("the app wrote 1 GiB to a client that read none of it")
		}
		t.Logf("the app's write failed %v after the client stopped reading (SendTimeout %v): %v", time.Since(stopped).Round(time.Millisecond), send, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("the app was still writing 20 s after the client stopped reading; SendTimeout is %v", send)
	}
	n, err := io.Copy(io.Discard, res.Body)
	if err == nil || n >= 1<<30 {
		t.Errorf("the client read %d bytes and then %v; want the answer cut short", n, err)
	}

	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprint(c2, "GET /slow HTTP/1.1\r\nHost: shop.perch.local\r\n\r\n")
	res, err = http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(res.Body)
	if got := strings.Count(string(b), "tick "); err != nil || got != 10 {
		t.Errorf("a slow stream read as it came: %d of 10 lines, %v", got, err)
	}
}
