package edge

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// smuggleHost is the Host of the app the smuggling table's requests go to.
const smuggleHost = "shop.perch.local"

// smuggleCase is one request (raw bytes) of the request-smuggling table.
type smuggleCase struct {
	name string
	raw  string
	// status is the answer the client must get (0: none needed, for a body
	// whose framing breaks after its head was forwarded).
	status []int
	// reach is what the machine must have received, "METHOD path body" per
	// request, in order; empty: nothing.
	reach []string
}

// smuggleCases is the table; a fast path runs the same one through
// checkSmuggling. Every refused request must get its status, find the
// connection closed, and reach no machine.
func smuggleCases() []smuggleCase {
	const h = "Host: " + smuggleHost + "\r\n"
	bad := func(name, raw string) smuggleCase {
		return smuggleCase{name: name, raw: raw, status: []int{http.StatusBadRequest}}
	}
	big := strings.Repeat("a", 80<<10)
	return []smuggleCase{
		// Controls: well-framed requests arrive as sent.
		{name: "get", raw: "GET /ok HTTP/1.1\r\n" + h + "Connection: close\r\n\r\n", status: []int{200}, reach: []string{"GET /ok "}},
		{name: "content-length body", raw: "POST /cl HTTP/1.1\r\n" + h + "Content-Length: 5\r\nConnection: close\r\n\r\nhello", status: []int{200}, reach: []string{"POST /cl hello"}},
		{name: "chunked body", raw: "POST /te HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", status: []int{200}, reach: []string{"POST /te hello"}},
		{name: "pipelined then smuggled", raw: "POST /a HTTP/1.1\r\n" + h + "Content-Length: 3\r\n\r\nabc" +
			"POST /b HTTP/1.1\r\n" + h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
			status: []int{200, 400}, reach: []string{"POST /a abc"}},
		// CL.TE and TE.CL.
		bad("CL.TE", "POST / HTTP/1.1\r\n"+h+"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
		bad("TE.CL", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
		// TE.TE obfuscations.
		bad("TE xchunked", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello"),
		bad("TE xchunked alone", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
		bad("TE leading space with CL", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding:  chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
		bad("TE space before colon", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
		bad("TE chunked, identity", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
		bad("TE identity, chunked", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n"),
		bad("TE tab with CL", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
		bad("TE tab before colon", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n"),
		bad("TE duplicated", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
		bad("TE chunked then identity", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
		bad("TE in HTTP/1.0", "POST / HTTP/1.0\r\n"+h+"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
		bad("TE folded", "POST / HTTP/1.1\r\n"+h+"Transfer-Encoding: identity\r\n chunked\r\nContent-Length: 5\r\n\r\nhello"),
		// Content-Length.
		bad("CL duplicated", "POST / HTTP/1.1\r\n"+h+"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
		bad("CL conflicting", "POST / HTTP/1.1\r\n"+h+"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
		bad("CL list", "POST / HTTP/1.1\r\n"+h+"Content-Length: 5, 6\r\n\r\nhello!"),
		bad("CL sign", "POST / HTTP/1.1\r\n"+h+"Content-Length: +5\r\n\r\nhello"),
		bad("CL hex", "POST / HTTP/1.1\r\n"+h+"Content-Length: 0x5\r\n\r\nhello"),
		// Line endings, folding, injection.
		bad("obs-fold", "GET / HTTP/1.1\r\n"+h+"X-Folded: a\r\n b\r\n\r\n"),
		bad("bare LF everywhere", "GET / HTTP/1.1\n"+h[:len(h)-2]+"\n\n"),
		bad("bare LF in a header", "POST / HTTP/1.1\r\n"+h+"X-A: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
		bad("bare CR in a header", "POST / HTTP/1.1\r\n"+h+"X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello"),
		bad("NUL in a value", "GET / HTTP/1.1\r\n"+h+"X-A: a\x00b\r\n\r\n"),
		bad("control in a value", "GET / HTTP/1.1\r\n"+h+"X-A: a\x01b\r\n\r\n"),
		bad("DEL in a value", "GET / HTTP/1.1\r\n"+h+"X-A: a\x7fb\r\n\r\n"),
		bad("space in a name", "GET / HTTP/1.1\r\n"+h+"X A: b\r\n\r\n"),
		bad("bad character in a name", "GET / HTTP/1.1\r\n"+h+"X(A): b\r\n\r\n"),
		bad("empty name", "GET / HTTP/1.1\r\n"+h+": b\r\n\r\n"),
		bad("whitespace before first header", "GET / HTTP/1.1\r\n "+h+"\r\n"),
		bad("two Hosts", "GET / HTTP/1.1\r\n"+h+"Host: other.example\r\n\r\n"),
		bad("space in target", "GET /a b HTTP/1.1\r\n"+h+"\r\n"),
		bad("double space in request line", "GET  / HTTP/1.1\r\n"+h+"\r\n"),
		bad("tab in request line", "GET\t/ HTTP/1.1\r\n"+h+"\r\n"),
		bad("bad version", "GET / HTTP/1.1x\r\n"+h+"\r\n"),
		// Sizes.
		{name: "oversize request line", raw: "GET /" + big + " HTTP/1.1\r\n" + h + "\r\n", status: []int{431, 414}},
		{name: "oversize headers", raw: "GET / HTTP/1.1\r\n" + h + "X-Big: " + big + "\r\n\r\n", status: []int{431}},
		// A chunked body whose framing breaks after the head went on: the
		// machine must not get a complete request.
		{name: "bare LF in chunk size", raw: "POST /c HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"},
		{name: "chunk without CRLF", raw: "POST /c HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"},
		{name: "bad chunk size", raw: "POST /c HTTP/1.1\r\n" + h + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"},
	}
}

// recorder is a machine that records the requests it received in full.
type recorder struct {
	mu     sync.Mutex
	got    []string
	protos []string // X-Forwarded-Proto of every request, kept
}

func (rec *recorder) handler(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "incomplete body", http.StatusBadRequest)
		return
	}
	rec.mu.Lock()
	rec.got = append(rec.got, r.Method+" "+r.URL.RequestURI()+" "+string(body))
	rec.protos = append(rec.protos, r.Header.Get("X-Forwarded-Proto"))
	rec.mu.Unlock()
}

func (rec *recorder) take() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	got := rec.got
	rec.got = nil
	return got
}

// checkSmuggling sends each case to the edge at addr on a new connection
// and checks the answers, that the edge closed the connection after a
// refusal, and what the machine behind it (rec) received.
func checkSmuggling(t *testing.T, addr string, rec *recorder) {
	checkSmugglingDial(t, func() (net.Conn, error) { return net.Dial("tcp", addr) }, rec)
}

// checkSmugglingDial is checkSmuggling over the connections dial makes
// (TLS, for one).
func checkSmugglingDial(t *testing.T, dial func() (net.Conn, error), rec *recorder) {
	checkSmugglingWrites(t, dial, rec, func(raw string) int { return len(raw) })
}

// checkSmugglingWrites is checkSmugglingDial with each case written in
// pieces of piece(raw) bytes: a request head that arrives in several
// segments must be checked as a whole all the same.
func checkSmugglingWrites(t *testing.T, dial func() (net.Conn, error), rec *recorder, piece func(string) int) {
	for _, tc := range smuggleCases() {
		t.Run(tc.name, func(t *testing.T) {
			statuses, closed := sendRaw(t, dial, tc.raw, piece(tc.raw))
			if len(tc.status) > 0 {
				if len(statuses) == 0 {
					t.Fatalf("no answer; want %v", tc.status)
				}
				if len(tc.status) > 1 && len(statuses) == len(tc.status) && statuses[0] == tc.status[0] {
					statuses = statuses[1:] // pipelined: the first one answered
				}
				if last := statuses[len(statuses)-1]; !contains(tc.status, last) {
					t.Errorf("answers %v; want %v", statuses, tc.status)
				}
			}
			if !closed {
				t.Errorf("the edge kept the connection open after %v", statuses)
			}
			// The edge answered, so what it forwarded has arrived.
			if got := rec.take(); strings.Join(got, "|") != strings.Join(tc.reach, "|") {
				t.Errorf("the machine received %q; want %q", got, tc.reach)
			}
		})
	}
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// sendRaw writes raw on a new connection to addr and reads answers until
// the edge closes the connection (closed) or 10 s pass.
func sendRaw(t *testing.T, dial func() (net.Conn, error), raw string, piece int) (statuses []int, closed bool) {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		for len(raw) > 0 {
			n := min(piece, len(raw))
			if _, err := io.WriteString(c, raw[:n]); err != nil {
				return
			}
			raw = raw[n:]
			if len(raw) > 0 {
				// A slow client: the pieces reach the edge as separate
				// reads (Go's connections send each write at once).
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var all bytes.Buffer
	_, err = io.Copy(&all, c)
	var ne net.Error
	closed = err == nil || !(errors.As(err, &ne) && ne.Timeout())
	br := bufio.NewReader(&all)
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return statuses, closed
		}
		_, _ = io.Copy(io.Discard, res.Body)
		statuses = append(statuses, res.StatusCode)
	}
}

// smugglingEdge is an edge on 127.0.0.1 serving app shop from one machine
// that records what reaches it; it returns the edge's address and the
// recorder.
func smugglingEdge(t *testing.T) (string, *recorder) {
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams", Addr: netip.MustParseAddr("127.0.0.1"), Log: testLog(t), Limits: Limits{MaxHeaderBytes: 16 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, e: e}
	port := freePort(t)
	rec := &recorder{}
	w.app("shop")
	w.place("shop", startMachine(t, "s1", "ams", "127.0.0.2", rec.handler), port, api.StateStarted)
	w.commit()
	run(t, e)
	waitFor(t, "the edge to listen", func() bool { return len(e.Listening()) == 1 })
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), rec
}

func TestRequestSmuggling(t *testing.T) {
	addr, rec := smugglingEdge(t)
	checkSmuggling(t, addr, rec)
}

// TestRequestSmugglingInPieces: the same table, each request written a few
// bytes at a time, so that its head reaches the edge in many reads.
func TestRequestSmugglingInPieces(t *testing.T) {
	addr, rec := smugglingEdge(t)
	checkSmugglingWrites(t, func() (net.Conn, error) { return net.Dial("tcp", addr) }, rec, func(raw string) int {
		return max(7, len(raw)/40) // 40 pieces at most: the 80 KiB cases stay quick
	})
}

// The same table over TLS (HTTP/1.1 by ALPN): the checks sit under the
// HTTP server there too, and the machine still learns the request came
// over TLS.
func TestRequestSmugglingTLS(t *testing.T) {
	ca := newTestCA(t, "edge-ca", smuggleHost)
	w := newCertWorld(t, ca)
	port := freePort(t)
	rec := &recorder{}
	w.app("shop")
	w.serveOn("shop", startMachine(t, "s1", "ams", "127.0.0.2", rec.handler), tcpPort(port, "tls", "http"))
	addr := w.listening(port)
	dial := func() (net.Conn, error) {
		return tls.Dial("tcp", addr, ca.clientTLS(smuggleHost, "http/1.1"))
	}
	checkSmugglingDial(t, dial, rec)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.protos) == 0 {
		t.Fatal("no request reached the machine")
	}
	for _, p := range rec.protos {
		if p != "https" {
			t.Errorf("the machine saw X-Forwarded-Proto %q over TLS; want https", p)
		}
	}
}
