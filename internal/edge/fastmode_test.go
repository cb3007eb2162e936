package edge

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// The edge's suite runs twice: first with net/http serving HTTP/1.1
// (HTTP1Std), then, in a second run of the same test binary with the same
// flags, on the fast path (HTTP1Fast, fast.go). Every edge a test makes
// through newEdge or newWorld, and every test server from serveEdge (a
// world's serve), takes the run's mode.

// http1Env names the mode of a run; TestMain sets it for the second.
const http1Env = "PERCH_EDGE_HTTP1"

// testHTTP1 is the mode this run tests.
var testHTTP1 = func() HTTP1Mode {
	if m := os.Getenv(http1Env); m != "" {
		return HTTP1Mode(m)
	}
	return HTTP1Std
}()

func TestMain(m *testing.M) {
	code := m.Run()
	if testHTTP1 == HTTP1Fast {
		fmt.Printf("HTTP/1 fast path: %d requests served by it, %d connections handed to net/http\n", fastNativeCount.Load(), fastHandedCount.Load())
	}
	if code != 0 || os.Getenv(http1Env) != "" || flagSet("test.fuzz") || flagSet("test.list") {
		os.Exit(code)
	}
	fmt.Println("== internal/edge again with the HTTP/1.1 fast path (" + http1Env + "=fast)")
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), http1Env+"="+string(HTTP1Fast))
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "second run:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// flagSet says whether the test binary's flag name has a value.
func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != ""
}

// newEdge is New with the run's HTTP/1 mode.
func newEdge(cfg Config) (*Edge, error) {
	if cfg.HTTP1 == "" {
		cfg.HTTP1 = testHTTP1
	}
	return New(cfg)
}

// serveEdge serves public port port of e on a loopback test server: e's
// Handler behind httptest's net/http server, or on the fast path a
// listener whose connections go to serveFast (and from it, for what it
// hands off, to the port's net/http server as in production). The
// httptest.Server is then only its URL and client.
func serveEdge(t testing.TB, e *Edge, port int) *httptest.Server {
	t.Helper()
	if !e.fast() {
		return httptestServer(t, e.Handler(port))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps := &portServer{ctx: ctx, port: port, ln: ln, q: newConnQueue(ln.Addr()), srv: e.newHTTPServer(port)}
	var wg sync.WaitGroup
	wg.Go(func() { _ = ps.srv.Serve(ps.q) })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if ps.conns.add(c) {
				wg.Go(func() { e.serveFast(ps, c, nil, c) })
			}
		}
	})
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Listener.Close()
	srv.Listener = &addrOnly{addr: ln.Addr(), done: make(chan struct{})}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		cancel()
		ln.Close()
		ps.q.Close()
		ps.srv.Close()
		ps.conns.closeAll()
		wg.Wait()
	})
	return srv
}

// addrOnly is a listener that accepts nothing: the httptest.Server of a
// fast-path test server, for its URL and client.
type addrOnly struct {
	addr net.Addr
	once sync.Once
	done chan struct{}
}

func (l *addrOnly) Accept() (net.Conn, error) { <-l.done; return nil, net.ErrClosed }
func (l *addrOnly) Close() error              { l.once.Do(func() { close(l.done) }); return nil }
func (l *addrOnly) Addr() net.Addr            { return l.addr }
