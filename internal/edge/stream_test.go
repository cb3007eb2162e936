package edge

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/perchhq/perch/internal/api"
)

// wsEcho is a machine that echoes WebSocket messages, prefixed with its id.
func wsEcho(t *testing.T, id, ip string) *machine {
	return startMachine(t, id, "ams", ip, func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, append([]byte(id+": "), msg...)); err != nil {
				return
			}
		}
	})
}

func TestWebSocketEcho(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "chat.perch.local")
	w := newCertWorld(t, ca)
	plain, tlsPort := freePort(t), freePort(t)
	w.app("chat")
	// h2_backend on the TLS port: upgrades still go to the app over HTTP/1.1.
	w.serveOn("chat", wsEcho(t, "c1", "127.0.0.2"), tcpPort(plain, "http"),
		api.Port{Port: tlsPort, Handlers: []string{"tls", "http"}, HTTPOptions: &api.HTTPOptions{H2Backend: true}})
	plainAddr, tlsAddr := w.listening(plain), w.listening(tlsPort)

	for _, tc := range []struct {
		url    string
		client *http.Client
	}{
		{"ws://" + plainAddr + "/chat", nil},
		{"wss://" + tlsAddr + "/chat", tlsClient(ca, "http/1.1")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		opts := &websocket.DialOptions{Host: "chat.perch.local", HTTPClient: tc.client}
		if tc.client != nil {
			tc.client.Transport.(*http.Transport).TLSClientConfig.ServerName = "chat.perch.local"
		}
		c, res, err := websocket.Dial(ctx, tc.url, opts)
		if err != nil {
			cancel()
			t.Fatalf("%s: dial: %v", tc.url, err)
		}
		if res.StatusCode != http.StatusSwitchingProtocols {
			t.Errorf("%s: status %d, want 101", tc.url, res.StatusCode)
		}
		for i := range 3 {
			msg := fmt.Sprintf("message %d", i)
			if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
				t.Fatalf("%s: write: %v", tc.url, err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || string(got) != "c1: "+msg {
				t.Fatalf("%s: echo %q %v, want %q", tc.url, got, err, "c1: "+msg)
			}
		}
		big := strings.Repeat("x", 1<<20)
		if err := c.Write(ctx, websocket.MessageBinary, []byte(big)); err != nil {
			t.Fatal(err)
		}
		c.SetReadLimit(2 << 20)
		if _, got, err := c.Read(ctx); err != nil || len(got) != len(big)+4 {
			t.Fatalf("%s: 1 MiB message came back as %d bytes (%v)", tc.url, len(got), err)
		}
		c.Close(websocket.StatusNormalClosure, "")
		cancel()
	}
}

// Server-sent events over TLS and HTTP/2: each event reaches the client as
// the machine flushes it.
func TestServerSentEventsOverHTTP2(t *testing.T) {
	ca := newTestCA(t, "edge-ca", "feed.perch.local")
	w := newCertWorld(t, ca)
	port := freePort(t)
	next := make(chan struct{})
	w.app("feed")
	w.serveOn("feed", startMachine(t, "f1", "ams", "127.0.0.2", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(rw, "id: %d\ndata: tick %d\n\n", i, i)
			rw.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}), tcpPort(port, "tls", "http"))
	addr := w.listening(port)

	c := tlsClient(ca)
	c.Transport.(*http.Transport).TLSClientConfig.ServerName = "feed.perch.local"
	req, _ := http.NewRequest("GET", "https://"+addr+"/events", nil)
	req.Host = "feed.perch.local"
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.ProtoMajor != 2 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("%s %q, want an HTTP/2 event stream", res.Proto, res.Header.Get("Content-Type"))
	}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "data: ") {
				lines <- sc.Text()
			}
		}
		close(lines)
	}()
	for i := range 3 {
		select {
		case l := <-lines:
			if l != fmt.Sprintf("data: tick %d", i) {
				t.Fatalf("event %d: %q", i, l)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("event %d did not arrive while the machine waited: the edge buffers", i)
		}
		// The machine sends the next event only now.
		select {
		case next <- struct{}{}:
		case <-time.After(5 * time.Second):
			t.Fatal("machine did not wait for the next tick")
		}
	}
}

// A large upload is streamed: the machine reads the first bytes while the
// client is still sending, and gets every byte.
func TestLargeUploadIsStreamed(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	var received atomic.Int64
	w.app("store")
	w.serveOn("store", startMachine(t, "u1", "ams", "127.0.0.2", func(rw http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Body.Read(buf)
			h.Write(buf[:n])
			received.Add(int64(n))
			if err != nil {
				break
			}
		}
		fmt.Fprintf(rw, "%d %x", received.Load(), h.Sum(nil))
	}), tcpPort(port, "http"))
	addr := w.listening(port)

	const total = 64 << 20
	pr, pw := io.Pipe()
	want := sha256.New()
	go func() {
		chunk := make([]byte, 1<<20)
		for i := 0; i < total/len(chunk); i++ {
			for j := range chunk {
				chunk[j] = byte(i + j)
			}
			want.Write(chunk)
			if _, err := pw.Write(chunk); err != nil {
				return
			}
			if i == 3 {
				// 4 MiB sent: the machine must be reading already.
				deadline := time.Now().Add(10 * time.Second)
				for received.Load() < 1<<20 && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				if received.Load() < 1<<20 {
					pw.CloseWithError(fmt.Errorf("the machine got %d bytes of the first 4 MiB: the edge holds the upload back", received.Load()))
					return
				}
			}
		}
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://"+addr+"/upload", pr)
	req.Host = "store.perch.local"
	req.ContentLength = total
	res, body := do(t, &http.Client{Timeout: 60 * time.Second}, req)
	if want := fmt.Sprintf("%d %s", total, hex.EncodeToString(want.Sum(nil))); res.StatusCode != 200 || body != want {
		t.Errorf("upload: %d %q, want %q", res.StatusCode, body, want)
	}
}
