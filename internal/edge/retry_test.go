package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// The nearest machine refuses connections; the client sees one 200 from
// the next, its body included (nothing had been sent), and the edge then
// goes straight to the live machine for a while.
func TestRetriesNextMachineWhenConnectionRefused(t *testing.T) {
	var buf syncBuffer
	w := newWorldLog(t, "ams", slog.New(slog.NewJSONHandler(&buf, nil)))
	w.app("shop")
	w.place("shop", deadMachine(t, "dead", "ams", "127.0.0.2"), 80, api.StateStarted)
	alive := startMachine(t, "alive", "fra", "127.0.0.3", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "alive got "+string(b))
	})
	w.place("shop", alive, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader("order=1"))
	req.Host = "shop.perch.local"
	res, body := do(t, srv.Client(), req)
	if res.StatusCode != http.StatusOK || body != "alive got order=1" {
		t.Fatalf("POST: got %d %q, want the machine in fra to get the whole body", res.StatusCode, body)
	}
	for range 3 {
		if res, body := get(t, srv, "shop.perch.local", nil); res.StatusCode != http.StatusOK {
			t.Fatalf("GET: got %d %q", res.StatusCode, body)
		}
	}
	if alive.hits.Load() != 4 {
		t.Errorf("the live machine got %d requests, want 4", alive.hits.Load())
	}
	// A request's log line is written just after its answer went out.
	var attempts []float64
	waitFor(t, "four access log lines", func() bool {
		attempts = attempts[:0]
		for line := range strings.SplitSeq(strings.TrimSpace(buf.String()), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "request" {
				attempts = append(attempts, rec["attempts"].(float64))
			}
		}
		return len(attempts) == 4
	})
	if len(attempts) != 4 || attempts[0] != 2 || attempts[1] != 1 {
		t.Errorf("attempts per request %v, want 2 for the first (refused, then fra) and 1 after (the refusing machine is set aside)", attempts)
	}
}

// A connect that fails some other way than a refusal (here the Dialer
// gives up) is retried the same way.
func TestRetriesNextMachineWhenConnectFails(t *testing.T) {
	live := startMachine(t, "live", "ams", "127.0.0.3", nil)
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Dialer: failingDialer{bad: "flaky"}})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	w.app("shop")
	w.place("shop", startMachine(t, "flaky", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.place("shop", live, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	for range 4 {
		res, body := get(t, srv, "shop.perch.local", nil)
		if res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "live" {
			t.Fatalf("got %d %q, want the live machine", res.StatusCode, body)
		}
	}
}

type failingDialer struct{ bad string }

func (d failingDialer) DialContext(ctx context.Context, network, addr string, t Target) (net.Conn, error) {
	if t.MachineID == d.bad {
		return nil, errors.New("mesh: no route to host")
	}
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

// A machine that read the request's body and then broke the connection
// may have acted on it: the request is not sent to another machine.
func TestBodyAlreadySentIsNotRetried(t *testing.T) {
	var got atomic.Int64
	breaks := startMachine(t, "breaks", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Add(int64(len(b)))
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	})
	other := startMachine(t, "other", "fra", "127.0.0.3", nil)
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", breaks, 80, api.StateStarted)
	w.place("shop", other, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	req, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader("amount=100"))
	req.Host = "shop.perch.local"
	res, body := do(t, srv.Client(), req)
	if res.StatusCode != http.StatusBadGateway {
		t.Errorf("got %d %q, want 502", res.StatusCode, body)
	}
	if got.Load() != int64(len("amount=100")) || other.hits.Load() != 0 {
		t.Errorf("the first machine read %d bytes and the other got %d requests; want the whole body once, and no second try", got.Load(), other.hits.Load())
	}
}

// A pipelined connection whose machine turns out unreachable on its first
// read (the mesh relay's refusal: edge.ErrNotDelivered) is a failed
// connect: the POST goes to the next machine with its whole body, and the
// refused one got nothing.
func TestRetriesNextMachineWhenNotDelivered(t *testing.T) {
	live := startMachine(t, "live", "ams", "127.0.0.3", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, "live got "+string(b))
	})
	d := &refusingDialer{bad: "gone"}
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Log: testLog(t), Dialer: d})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	w.app("shop")
	w.place("shop", startMachine(t, "gone", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.place("shop", live, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)
	for i := range 4 {
		req, _ := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader("amount=100"))
		req.Host = "shop.perch.local"
		res, body := do(t, srv.Client(), req)
		if res.StatusCode != http.StatusOK || body != "live got amount=100" {
			t.Fatalf("POST %d: got %d %q, want the live machine to get the whole body", i, res.StatusCode, body)
		}
	}
	if d.refused.Load() == 0 {
		t.Fatal("no request was sent to the refusing machine: the test proves nothing")
	}
	if !d.pipelined.Load() {
		t.Error("the HTTP proxy did not ask for pipelined connections")
	}
}

// refusingDialer dials normally, except machine bad: its connection takes
// writes and fails every read with ErrNotDelivered, as a refused relay
// connection does.
type refusingDialer struct {
	bad       string
	refused   atomic.Int64
	pipelined atomic.Bool
}

func (d *refusingDialer) DialContext(ctx context.Context, network, addr string, t Target) (net.Conn, error) {
	if t.Pipelined {
		d.pipelined.Store(true)
	}
	if t.MachineID != d.bad {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	if !t.Pipelined {
		return nil, errors.New("refused")
	}
	d.refused.Add(1)
	a, b := net.Pipe()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	return refusedConn{a}, nil
}

type refusedConn struct{ net.Conn }

func (c refusedConn) Read([]byte) (int, error) {
	return 0, fmt.Errorf("%w: mesh: relay refused: not a machine of this host", ErrNotDelivered)
}
