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
		"Fly-Client-Ip":   {"192.0.2.1"},
		"Fly-Region":      {"spoofed"},
	})
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d %q", res.StatusCode, body)
	}
	got := answeredBy(t, body).Headers
	id := res.Header.Get(hdrRequestID)
	for name, want := range map[string]string{
		"X-Forwarded-For":      "203.0.113.9, 127.0.0.1",
		"Via":                  "1.0 corp-proxy, 1.1 perch",
		"Perch-Region":         "ams",
		"Perch-Client-Ip":      "127.0.0.1",
		"X-Forwarded-Proto":    "http",
		"X-Forwarded-Port":     "80",
		"Perch-Forwarded-Port": "80",
		"X-Forwarded-Host":     "shop.perch.local",
		"Perch-Request-Id":     id,
		// Fly's names, for libraries written for Fly.
		"Fly-Client-Ip":       "127.0.0.1",
		"Fly-Region":          "ams",
		"Fly-Forwarded-Port":  "80",
		"Fly-Forwarded-Proto": "http",
		"Fly-Forwarded-Ssl":   "off",
		"Fly-Request-Id":      id,
	} {
		if v := strings.Join(got[name], ", "); v != want {
			t.Errorf("machine got %s: %q, want %q", name, v, want)
		}
	}
	if len(id) != 16 || len(res.Header.Values(hdrRequestID)) != 1 {
		t.Errorf("client got %s %q, want one 16-digit id (the app's own must not leak)", hdrRequestID, res.Header.Values(hdrRequestID))
	}
	if v := res.Header.Values("Server"); len(v) != 1 || v[0] != "perch" {
		t.Errorf("client got Server %q, want perch alone (the app's own is replaced)", v)
	}
	if res404, _ := get(t, srv, "nope.perch.local", nil); res404.Header.Get("Server") != "perch" {
		t.Errorf("the edge's own answers have Server %q, want perch", res404.Header.Get("Server"))
	}
	res2, _ := get(t, srv, "shop.perch.local", nil)
	if id2 := res2.Header.Get(hdrRequestID); id2 == id || id2 == "" {
		t.Errorf("two requests got request ids %q and %q, want two different ones", id, id2)
	}
}

// Each event the machine flushes reaches the client before the machine
// finishes the response (within the edge's flush interval).
func TestStreamsResponses(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	m := startMachine(t, "s1", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		// Neither text/event-stream nor chunked, which ReverseProxy would
		// flush at once anyway: the edge must not hold any response back
		// for longer than its flush interval.
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

	// A request's line is written just after its answer went out.
	var lines []string
	waitFor(t, "two access log lines", func() bool {
		lines = strings.Split(strings.TrimSpace(buf.String()), "\n")
		return len(lines) >= 2
	})
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
		"bytes_in": 0.0, "proto": "HTTP/1.1", "attempts": 1.0,
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
