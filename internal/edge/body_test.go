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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// bodyEdge runs an edge with limits on 127.0.0.1 serving app "shop": one
// machine with hard_limit 25 that reads each request's body whole before
// answering (a second late on /slow). peak is the most requests the machine had in flight at once.
func bodyEdge(t *testing.T, limits Limits) (addr string, peak *atomic.Int32) {
	t.Helper()
	return bodyEdgeHard(t, limits, 25)
}

// bodyEdgeHard is bodyEdge with the machine's hard limit.
func bodyEdgeHard(t *testing.T, limits Limits, hard int) (addr string, peak *atomic.Int32) {
	t.Helper()
	var now atomic.Int32
	peak = new(atomic.Int32)
	m := startMachine(t, "m1", "ams", "127.0.0.2", func(w http.ResponseWriter, r *http.Request) {
		n := now.Add(1)
		defer now.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if r.URL.Path == "/slow" {
			time.Sleep(time.Second) // an app slow to read: not the client's fault
		}
		got, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "read %d bytes", got)
	})
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t), Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	port := freePort(t)
	w.app("shop")
	w.limited("shop", m, port, &api.Concurrency{Type: "requests", SoftLimit: hard, HardLimit: hard})
	w.commit()
	run(t, e)
	waitFor(t, "the edge to listen", func() bool { return len(e.Listening()) == 1 })
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), peak
}

// slowBody is one connection from 127.0.0.1 that sends a POST announcing
// length bytes of body and then sends one byte every interval.
type slowBody struct {
	status int           // the edge's answer, 0 for none
	after  time.Duration // when the answer (or the close) came
}

func trickleBody(t *testing.T, addr string, length int, interval time.Duration, stop <-chan struct{}) <-chan slowBody {
	out := make(chan slowBody, 1)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Errorf("dial: %v", err)
		out <- slowBody{}
		return out
	}
	start := time.Now()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: shop.perch.local\r\nContent-Length: %d\r\n\r\n", length)
	go func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				c.Close()
				return
			case <-tick.C:
				if _, err := c.Write([]byte{'x'}); err != nil {
					return
				}
			}
		}
	}()
	go func() {
		defer c.Close()
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			out <- slowBody{after: time.Since(start)}
			return
		}
		res.Body.Close()
		out <- slowBody{status: res.StatusCode, after: time.Since(start)}
	}()
	return out
}

// others sends n requests (half GET, half POST with a 1 KiB body) from
// 127.0.0.9, eight at a time, and returns the answers that were not 200.
func others(t *testing.T, addr string, n int) (failed []string, slowest time.Duration) {
	t.Helper()
	c := from("127.0.0.9")
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			if i%2 == 1 {
				req, _ = http.NewRequest("POST", "http://"+addr+"/form", strings.NewReader(strings.Repeat("a", 1<<10)))
			}
			req.Host = "shop.perch.local"
			start := time.Now()
			res, err := c.Do(req)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, d)
			if err != nil {
				failed = append(failed, err.Error())
				return
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				failed = append(failed, fmt.Sprintf("%d %s", res.StatusCode, b))
			}
		}()
	}
	wg.Wait()
	return failed, slowest
}

// The attack: 40 connections from one address trickle their
// request bodies a byte at a time at an app whose one machine has
// hard_limit 25. Small bodies are read by the edge and hold no slot; large
// ones hold at most MaxUploadsPerClient slots (the rest get 429); all of
// them are cut with 408 once below the minimum rate. Another client's
// requests all succeed meanwhile. Without the body rules the same attack
// turns that client away with 503, which shows the test can fail.
func TestSlowBodiesDoNotFillHardLimit(t *testing.T) {
	const (
		conns    = 40
		bodyTime = time.Second
		interval = 200 * time.Millisecond // 5 bytes/s
		small    = 1 << 10                // read whole by the edge
		large    = 10 << 20               // streams to the machine
	)
	t.Run("body rules", func(t *testing.T) {
		addr, peak := bodyEdge(t, Limits{BodyTimeout: bodyTime, QueueTimeout: time.Second})
		stop := make(chan struct{})
		defer close(stop)
		var smalls, larges []<-chan slowBody
		for range conns {
			smalls = append(smalls, trickleBody(t, addr, small, interval, stop))
			larges = append(larges, trickleBody(t, addr, large, interval, stop))
		}
		up := DefaultLimits.MaxUploadsPerClient
		waitFor(t, "the attacker's uploads to reach the machine", func() bool { return peak.Load() >= int32(up) })
		failed, slowest := others(t, addr, 100)
		if len(failed) > 0 {
			t.Errorf("during the attack %d of another client's 100 requests failed, e.g. %s", len(failed), failed[0])
		}
		t.Logf("another client's 100 requests during the attack: slowest %s", slowest)

		limit := bodyTime + 3*time.Second
		count := func(chs []<-chan slowBody) map[int]int {
			got := map[int]int{}
			for _, ch := range chs {
				select {
				case r := <-ch:
					got[r.status]++
					if r.after > limit {
						t.Errorf("a slow body was answered %d after %s, want within %s", r.status, r.after, limit)
					}
				case <-time.After(limit + 2*time.Second):
					t.Fatal("a slow body is still unanswered well past the body timeout")
				}
			}
			return got
		}
		s, l := count(smalls), count(larges)
		t.Logf("small bodies: %v; large bodies: %v; the machine's peak in flight: %d", s, l, peak.Load())
		if s[http.StatusRequestTimeout] != conns {
			t.Errorf("small slow bodies answered %v, want all %d with 408", s, conns)
		}
		if l[http.StatusRequestTimeout] != up || l[http.StatusTooManyRequests] != conns-up {
			t.Errorf("large slow bodies answered %v, want %d with 408 and %d with 429", l, up, conns-up)
		}
		// The machine saw at most the attacker's uploads and the other
		// client's eight at once: never its hard limit.
		if p := peak.Load(); p > int32(up+8) {
			t.Errorf("the machine had %d requests in flight at once, want at most %d", p, up+8)
		}
	})
	t.Run("without them", func(t *testing.T) {
		addr, _ := bodyEdge(t, Limits{BodyTimeout: -1, BodyBufferBytes: -1, MaxUploadsPerClient: -1, QueueTimeout: 300 * time.Millisecond})
		stop := make(chan struct{})
		defer close(stop)
		for range conns {
			trickleBody(t, addr, small, interval, stop)
		}
		waitFor(t, "the attack to fill the machine", func() bool {
			failed, _ := others(t, addr, 1)
			return len(failed) == 1 && strings.HasPrefix(failed[0], "503")
		})
	})
}

// A body that keeps above the minimum rate passes whatever its length, a
// small one sent in pieces is read whole, and one that pauses longer than
// BodyTimeout gets 408.
func TestBodyRate(t *testing.T) {
	addr, _ := bodyEdge(t, Limits{BodyTimeout: 300 * time.Millisecond, BodyMinRate: 10 << 10})
	send := func(length int, pieces []int, pause time.Duration) (int, string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: shop.perch.local\r\nContent-Length: %d\r\n\r\n", length)
		for _, n := range pieces {
			if _, err := c.Write([]byte(strings.Repeat("y", n))); err != nil {
				break
			}
			time.Sleep(pause) // the client's own pace, which the edge measures
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("read answer: %v", err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		return res.StatusCode, string(b)
	}
	// 256 KiB streamed in 32 KiB pieces every 100 ms: 320 KiB/s.
	if code, body := send(256<<10, []int{32 << 10, 32 << 10, 32 << 10, 32 << 10, 32 << 10, 32 << 10, 32 << 10, 32 << 10}, 100*time.Millisecond); code != http.StatusOK || body != "read 262144 bytes" {
		t.Errorf("a large body at 320 KiB/s: %d %q", code, body)
	}
	// 3 KiB buffered, in pieces every 200 ms: each pause within the timeout.
	if code, body := send(3<<10, []int{1 << 10, 1 << 10, 1 << 10}, 200*time.Millisecond); code != http.StatusOK || body != "read 3072 bytes" {
		t.Errorf("a small body in pieces: %d %q", code, body)
	}
	// Half a body, then a pause of 1 s.
	for _, length := range []int{4 << 10, 1 << 20} {
		code, body := send(length, []int{2 << 10}, time.Second)
		if code != http.StatusRequestTimeout || !strings.Contains(body, "too slowly") {
			t.Errorf("a %d-byte body that paused: %d %q, want 408", length, code, body)
		}
	}
}

// Over HTTP/2 one connection carries many bodies at once: the upload cap
// counts streams, not connections, and a stream whose body pauses is cut
// with 408 like an HTTP/1.1 request's.
func TestBodyRulesOverHTTP2(t *testing.T) {
	const streams, bodyTime = 12, 500 * time.Millisecond
	addr, _ := bodyEdge(t, Limits{BodyTimeout: bodyTime})
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true) // h2c, prior knowledge: one connection
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	type answer struct {
		code  int
		proto string
		after time.Duration
	}
	out := make(chan answer, streams)
	var writers []*io.PipeWriter
	defer func() {
		for _, w := range writers {
			w.Close()
		}
	}()
	for range streams {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr) // no length: streams
		req.Host = "shop.perch.local"
		go func() {
			start := time.Now()
			res, err := c.Do(req)
			if err != nil {
				t.Logf("client: %v", err)
				out <- answer{after: time.Since(start)}
				return
			}
			res.Body.Close()
			out <- answer{res.StatusCode, res.Proto, time.Since(start)}
		}()
		go pw.Write([]byte("x")) // one byte, then silence
	}
	got := map[int]int{}
	for range streams {
		select {
		case a := <-out:
			got[a.code]++
			if a.code != 0 && a.proto != "HTTP/2.0" {
				t.Errorf("answered over %s, want HTTP/2.0", a.proto)
			}
			if a.after > bodyTime+3*time.Second {
				t.Errorf("a paused body was answered %d after %s", a.code, a.after)
			}
		case <-time.After(bodyTime + 5*time.Second):
			t.Fatalf("a paused body is still unanswered; so far %v", got)
		}
	}
	up := DefaultLimits.MaxUploadsPerClient
	t.Logf("%d bodies on one HTTP/2 connection: %v", streams, got)
	if got[http.StatusRequestTimeout] != up || got[http.StatusTooManyRequests] != streams-up {
		t.Errorf("answers %v, want %d with 408 and %d with 429", got, up, streams-up)
	}
}

// An app slow to read a body is not a slow client: a body the client sent
// at once passes, though the app reads it only after BodyTimeout, over
// HTTP/1.1 and HTTP/2.
func TestSlowAppIsNotASlowClient(t *testing.T) {
	addr, _ := bodyEdge(t, Limits{BodyTimeout: 200 * time.Millisecond})
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	defer h2.CloseIdleConnections()
	for name, c := range map[string]*http.Client{"HTTP/1.1": from("127.0.0.1"), "HTTP/2.0": {Transport: h2, Timeout: 10 * time.Second}} {
		for _, size := range []int{4 << 10, 32 << 20} { // read whole first; streamed, past the sockets' buffers
			req, _ := http.NewRequest("POST", "http://"+addr+"/slow", strings.NewReader(strings.Repeat("z", size)))
			req.Host = "shop.perch.local"
			res, body := do(t, c, req)
			if want := fmt.Sprintf("read %d bytes", size); res.StatusCode != http.StatusOK || body != want || res.Proto != name {
				t.Errorf("%s, %d bytes to an app that reads a second late: %s %d %q, want 200 %q", name, size, res.Proto, res.StatusCode, body, want)
			}
		}
	}
}

// Buffers are bounded per client address, not per request: 40 bodies of
// 64 KiB, declared and then stalled, on one HTTP/2 connection. The first
// 16 (1 MiB) are buffered, the next 8 stream as uploads (taking machine
// slots), the rest get 429.
func TestBufferedBodiesBoundedPerClient(t *testing.T) {
	const streams, size, bodyTime = 40, 64 << 10, 500 * time.Millisecond
	addr, peak := bodyEdge(t, Limits{BodyTimeout: bodyTime})
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}

	out := make(chan int, streams)
	var writers []*io.PipeWriter
	defer func() {
		for _, w := range writers {
			w.Close()
		}
	}()
	for range streams {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr)
		req.ContentLength = size
		req.Host = "shop.perch.local"
		go func() {
			res, err := c.Do(req)
			if err != nil {
				t.Logf("client: %v", err)
				out <- 0
				return
			}
			res.Body.Close()
			out <- res.StatusCode
		}()
		go pw.Write([]byte("x"))
	}
	got := map[int]int{}
	for range streams {
		select {
		case code := <-out:
			got[code]++
		case <-time.After(bodyTime + 5*time.Second):
			t.Fatalf("a stalled body is still unanswered; so far %v", got)
		}
	}
	t.Logf("%d stalled 64 KiB bodies from one address: %v; the machine's peak in flight: %d", streams, got, peak.Load())
	up := DefaultLimits.MaxUploadsPerClient
	if got[http.StatusRequestTimeout] != bufferPerClient+up || got[http.StatusTooManyRequests] != streams-bufferPerClient-up {
		t.Errorf("answers %v, want %d with 408 (%d buffered, %d streamed) and %d with 429",
			got, bufferPerClient+up, bufferPerClient, up, streams-bufferPerClient-up)
	}
	if p := peak.Load(); p != int32(up) {
		t.Errorf("the machine had %d requests in flight at most, want the %d streamed", p, up)
	}
}

// An app with few slots: one address may stream uploads into at most half
// of them (hard_limit 5: 2), whatever the edge's own cap, and another
// client is served meanwhile.
func TestUploadsTakeAtMostHalfAnApp(t *testing.T) {
	const conns, bodyTime = 6, time.Second
	addr, peak := bodyEdgeHard(t, Limits{BodyTimeout: bodyTime}, 5)
	stop := make(chan struct{})
	defer close(stop)
	var slow []<-chan slowBody
	for range conns {
		slow = append(slow, trickleBody(t, addr, 10<<20, 200*time.Millisecond, stop))
	}
	waitFor(t, "two uploads to reach the machine", func() bool { return peak.Load() >= 2 })
	if failed, _ := others(t, addr, 20); len(failed) > 0 {
		t.Errorf("%d of another client's 20 requests failed, e.g. %s", len(failed), failed[0])
	}
	got := map[int]int{}
	for _, ch := range slow {
		select {
		case r := <-ch:
			got[r.status]++
		case <-time.After(bodyTime + 5*time.Second):
			t.Fatal("a slow body is still unanswered well past the body timeout")
		}
	}
	t.Logf("%d slow uploads from one address to a machine with hard_limit 5: %v", conns, got)
	if got[http.StatusRequestTimeout] != 2 || got[http.StatusTooManyRequests] != conns-2 {
		t.Errorf("answers %v, want 2 with 408 and %d with 429", got, conns-2)
	}
}
