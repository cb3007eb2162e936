package edge

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

func TestHeadersToMachineAndClient(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	res, body := get(t, srv, "shop.perch.local", http.Header{
		"X-Forwarded-For": {"203.0.113.9"},
		"Via":             {"1.0 corp-proxy"},
		"Perch-Region":    {"spoofed"},
		"Perch-Client-Ip": {"192.0.2.1"},
	})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d %q", res.StatusCode, body)
	}
	got := answeredBy(t, body).Headers
	id := res.Header.Get(hdrRequestID)
	for name, want := range map[string]string{
		"X-Forwarded-For":   "203.0.113.9, 127.0.0.1",
		"Via":               "1.0 corp-proxy, 1.1 perch",
		"Perch-Region":      "ams",
		"Perch-Client-Ip":   "127.0.0.1",
		"X-Forwarded-Proto": "http",
		"X-Forwarded-Port":  "80",
		"X-Forwarded-Host":  "shop.perch.local",
		"Perch-Request-Id":  id,
	} {
		if v := strings.Join(got[name], ", "); v != want {
			t.Errorf("machine got %s: %q, want %q", name, v, want)
		}
	}
	if len(id) != 16 || len(res.Header.Values(hdrRequestID)) != 1 {
		t.Errorf("client got %s %q, want one 16-digit id (the app's own must not leak)", hdrRequestID, res.Header.Values(hdrRequestID))
	}
	res2, _ := get(t, srv, "shop.perch.local", nil)
	if id2 := res2.Header.Get(hdrRequestID); id2 == id || id2 == "" {
		t.Errorf("two requests got request ids %q and %q, want two different ones", id, id2)
	}
}

// The first machine refuses connections; the client sees one 200 from the
// next. A request with a body is not sent twice.
func TestRetriesNextMachineWhenConnectionRefused(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", deadMachine(t, "dead", "ams", "127.0.0.2"), 80, api.StateStarted)
	alive := startMachine(t, "alive", "fra", "127.0.0.3", nil)
	w.place("shop", alive, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	for range 3 {
		res, body := get(t, srv, "shop.perch.local", nil)
		if res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "alive" {
			t.Fatalf("got %d %q, want the machine in fra to answer", res.StatusCode, body)
		}
	}

	req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader("order=1"))
	req.Host = "shop.perch.local"
	res, body := do(t, srv.Client(), req)
	if res.StatusCode != http.StatusBadGateway || !strings.Contains(body, "none could be reached") {
		t.Errorf("POST with a body: got %d %q, want 502 (its body is spent on the first try)", res.StatusCode, body)
	}
	if res.Header.Get(hdrRequestID) == "" {
		t.Errorf("502 has no %s", hdrRequestID)
	}
	if alive.hits.Load() != 3 {
		t.Errorf("the live machine got %d requests, want 3", alive.hits.Load())
	}
}

// Each event the machine flushes reaches the client before the machine
// finishes the response.
func TestStreamsResponses(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	m := startMachine(t, "s1", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		// Neither text/event-stream nor chunked, which ReverseProxy would
		// flush anyway: the edge must not buffer any response.
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len("data: first\n\ndata: last\n\n")))
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "data: last\n\n")
	})
	defer free() // before the servers close: they wait for their handlers
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", m, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	first := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", srv.URL+"/events", nil)
		req.Host = "shop.perch.local"
		res, err := srv.Client().Do(req)
		if err != nil {
			first <- err.Error()
			return
		}
		defer res.Body.Close()
		s, _ := bufio.NewReader(res.Body).ReadString('\n')
		first <- s
	}()
	select {
	case s := <-first:
		if s != "data: first\n" {
			t.Fatalf("first line %q, want the first event", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the first event did not reach the client while the machine was still writing: the edge buffers")
	}
	free()
}

func TestAccessLog(t *testing.T) {
	var buf syncBuffer
	w := newWorldLog(t, "ams", slog.New(slog.NewJSONHandler(&buf, nil)))
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "fra", "127.0.0.2", nil), 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	res, body := get(t, srv, "shop.perch.local", nil)
	res404, _ := get(t, srv, "nope.perch.local", nil)

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one access log line per request, got %q", lines)
	}
	var ok, missing map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &ok); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &missing); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"msg": "request", "request_id": res.Header.Get(hdrRequestID), "app": "shop", "machine": "s1",
		"machine_region": "fra", "region": "ams", "status": 200.0, "bytes": float64(len(body)),
	} {
		if ok[k] != want {
			t.Errorf("access log %s = %v, want %v (line %s)", k, ok[k], want, lines[0])
		}
	}
	if _, has := ok["duration_ms"]; !has {
		t.Errorf("access log has no duration: %s", lines[0])
	}
	if missing["status"] != 404.0 || missing["request_id"] != res404.Header.Get(hdrRequestID) {
		t.Errorf("404 access log line %s", lines[1])
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
