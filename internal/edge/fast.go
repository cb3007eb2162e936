package edge

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The HTTP/1.1 fast path (Config.HTTP1 = HTTP1Fast). A client connection
// speaking HTTP/1.1 is served by one goroutine that reads request heads
// into a pooled buffer, parses them in place with the guard's own parser
// (headparse.go: RFC 9112 framing checked once, refused with 400 and the
// connection closed), rewrites the Perch and X-Forwarded headers while
// copying the head to a machine connection from a per-machine keep-alive
// pool (fastpool.go), and copies the answer back with its own framing.
//
// It serves the common request natively: no body, not an upgrade, no
// Expect, an app with started machines and no statics, plain HTTP/1.1 to
// the machine. Every other request, and HTTP/2 (ALPN h2 or the h2c
// preface), is handed with the connection, the bytes already read put
// back in front, to the port's net/http server behind the guard: the
// connection then stays there. So every edge feature keeps working on the
// fast path, and the features the fast path serves itself (routing by
// Host, headers, limits and queueing, retries of failed connects and
// ErrNotDelivered, Perch-Replay, access log, metrics, demand) run the
// same code as net/http's path (choose.go, limits.go, answers.go).

// fastNativeCount and fastHandedCount add up every edge's fast-path requests
// of the process, for the tests' summary (fastmode_test.go).
var fastNativeCount, fastHandedCount atomic.Int64

// HTTP1Mode chooses how the edge serves HTTP/1.1 client connections.
type HTTP1Mode string

const (
	// HTTP1Std serves every request with net/http's server and transport.
	HTTP1Std HTTP1Mode = "std"
	// HTTP1Fast serves HTTP/1.1 with the edge's own fast path (fast.go).
	HTTP1Fast HTTP1Mode = "fast"
)

// ParseHTTP1Mode reads a --http1 value.
func ParseHTTP1Mode(s string) (HTTP1Mode, error) {
	switch m := HTTP1Mode(s); m {
	case HTTP1Std, HTTP1Fast:
		return m, nil
	case "":
		return defaultHTTP1, nil
	}
	return "", fmt.Errorf("edge: unknown HTTP/1 mode %q: use %q (the edge's own HTTP/1.1 path) or %q (net/http)", s, HTTP1Fast, HTTP1Std)
}

// defaultHTTP1 is the mode of a Config that names none. (Its kept machine
// connections close after BackendIdleTimeout, fastpool.go, so that they
// do not keep a machine on another host from going idle for autostop.)
const defaultHTTP1 = HTTP1Fast

// fastBufSize is the size of a client connection's read buffer and of a
// machine connection's; a request head larger than a client buffer goes to
// net/http (which answers 431 past MaxHeaderBytes).
const fastBufSize = 16 << 10

var fastBufs = sync.Pool{New: func() any { b := make([]byte, fastBufSize); return &b }}

// fastOuts are the buffers heads are written in, taken per request.
var fastOuts = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// fastConn is one client connection on the fast path.
type fastConn struct {
	e   *Edge
	ps  *portServer
	c   net.Conn
	tls *tls.ConnectionState
	buf *[]byte // from fastBufs while a request is in hand; nil while idle
	r   []byte  // bytes read and not yet used, in buf
	// small takes an idle connection's next bytes, and holds a request
	// whose head (and body) fit: a connection holds a pooled buffer only
	// while a larger one is in hand.
	small [512]byte
	out   []byte // the head being written to a machine or the client
	h     reqHead
	res   resHead
	// connTokens are the names the request's Connection header lists
	// (splitTokens), in its head.
	connTokens [][]byte
	body       []byte    // the request's body, in buf
	ip         string    // the client's address, for the headers and the log
	addr       string    // the client's address and port, as r.RemoteAddr
	n          int       // requests served
	rdl        time.Time // the read deadline set on c (setReadDeadline)
	wdl        time.Time // the write deadline set on c (sendDeadline)
	// gone is set when the client left while its request waited for a
	// slot (fastpool.go's acquire).
	gone atomic.Bool
	// tracked is the connection as the port's connSet holds it.
	tracked net.Conn
}

// fast says whether HTTP/1.1 client connections take the fast path.
func (e *Edge) fast() bool { return e.cfg.HTTP1 == HTTP1Fast }

// serveFast serves client connection c of ps on the fast path until it
// closes or is handed to net/http. state is its TLS state, if terminated;
// tracked is the connection as ps.conns knows it (c or what c wraps),
// which the caller added.
func (e *Edge) serveFast(ps *portServer, c net.Conn, state *tls.ConnectionState, tracked net.Conn) {
	fc := &fastConn{e: e, ps: ps, c: c, tls: state, buf: fastBufs.Get().(*[]byte), tracked: tracked}
	fc.addr = c.RemoteAddr().String()
	fc.ip = clientIP(fc.addr)
	if !fc.serve() {
		ps.conns.remove(tracked)
		c.Close()
	}
	if fc.buf != nil {
		fastBufs.Put(fc.buf)
	}
}

// errHeadTooLarge: the head did not fit the buffer.
var errHeadTooLarge = errors.New("request head too large for the fast path")

// serve runs the connection's requests; it says whether the connection
// was handed to net/http.
func (fc *fastConn) serve() bool {
	for {
		end, err := fc.readHead()
		switch {
		case errors.Is(err, errHeadTooLarge), err == errH2:
			return fc.handOff()
		case err != nil:
			return false
		case end < 0: // a bad line end
			fc.refuse()
			return false
		}
		head := fc.r[:end+2]
		if !parseHead(head, &fc.h) {
			fc.refuse()
			return false
		}
		keep, native := fc.request(end + 4)
		if !native {
			return fc.handOff()
		}
		fc.n++
		if !keep {
			return false
		}
	}
}

var errH2 = errors.New("HTTP/2 preface")

// readHead reads until fc.r holds a whole head; it gives the index of its
// final CRLFCRLF, or -1 for a head with a bare CR or LF.
//
// Deadlines are set only before a read that may wait: none for a head
// already in hand (pipelined), the idle timeout while the connection
// waits for a next request (moved on only once it is a 64th of the
// timeout old: setReadDeadline), the header timeout for the first
// request's head and for the rest of a head whose first bytes came. A
// head that comes whole in one read, the common case, costs at most the
// idle deadline's move, and most requests none.
func (fc *fastConn) readHead() (int, error) {
	lim := fc.e.limits
	waiting := len(fc.r) == 0 && fc.n > 0 // for a next request
	armed := false                        // the deadline for this wait is set
	if waiting && fc.buf != nil {
		fastBufs.Put(fc.buf) // idle: wait on small
		fc.buf, fc.r = nil, nil
	}
	for {
		if len(fc.r) > 0 {
			if fc.n == 0 && bytes.HasPrefix(fc.r, []byte("PRI ")) {
				return 0, errH2
			}
			if i := bytes.Index(fc.r, []byte("\r\n\r\n")); i >= 0 {
				if badLineEnd(fc.r[:i+4]) {
					return -1, nil
				}
				return i, nil
			}
			if badLineEnd(fc.r) {
				return -1, nil
			}
		}
		if !armed {
			switch {
			case waiting && lim.IdleTimeout > 0:
				fc.setReadDeadline(time.Now().Add(lim.IdleTimeout), lim.IdleTimeout/64)
			case waiting:
				fc.setReadDeadline(time.Time{}, 0) // idle for as long as it likes
			case lim.ReadHeaderTimeout > 0:
				fc.setReadDeadline(time.Now().Add(lim.ReadHeaderTimeout), 0)
			default:
				fc.setReadDeadline(time.Time{}, 0)
			}
			armed = true
		}
		buf := fc.small[:]
		if fc.buf != nil {
			buf = *fc.buf
		}
		if len(fc.r) == len(buf) {
			if fc.buf != nil {
				return 0, errHeadTooLarge
			}
			// A head larger than small: on to a pooled buffer.
			fc.buf = fastBufs.Get().(*[]byte)
			buf = *fc.buf
		}
		// Move what there is to the front and read after it.
		n := copy(buf, fc.r)
		m, err := fc.c.Read(buf[n:])
		fc.r = buf[:n+m]
		if m > 0 && waiting {
			// The idle wait is over: the rest of the head, if it
			// did not all come, has ReadHeaderTimeout.
			waiting, armed = false, false
		}
		if err != nil && m == 0 {
			return 0, err
		}
	}
}

// setReadDeadline sets the client connection's read deadline to t, unless
// the one set is zero like t or at most slack earlier than t: each move
// rearms a runtime timer, and an idle connection closed up to slack early
// is no loss.
func (fc *fastConn) setReadDeadline(t time.Time, slack time.Duration) {
	if t.IsZero() && fc.rdl.IsZero() {
		return
	}
	if !t.IsZero() && !fc.rdl.IsZero() {
		if d := t.Sub(fc.rdl); d >= 0 && d < slack {
			return
		}
	}
	fc.rdl = t
	_ = fc.c.SetReadDeadline(t)
}

// sendDeadline gives the next write to the client SendTimeout to finish,
// moving the deadline at most every 64th of it (as setReadDeadline), so a
// write has between 63/64 of SendTimeout and all of it.
func (fc *fastConn) sendDeadline() {
	to := fc.e.limits.SendTimeout
	if to <= 0 {
		return
	}
	t := time.Now().Add(to)
	if d := t.Sub(fc.wdl); d >= 0 && d < to/64 {
		return
	}
	fc.wdl = t
	_ = fc.c.SetWriteDeadline(t)
}

// badLineEnd says b holds a CR not followed by LF or an LF not preceded
// by CR.
func badLineEnd(b []byte) bool {
	for i := bytes.IndexAny(b, "\r\n"); i >= 0 && i < len(b); {
		switch {
		case b[i] == '\n' && (i == 0 || b[i-1] != '\r'):
			return true
		case b[i] == '\r' && i+1 < len(b) && b[i+1] != '\n':
			return true
		}
		j := bytes.IndexAny(b[i+1:], "\r\n")
		if j < 0 {
			break
		}
		i += j + 1
	}
	return false
}

// refuse answers a head RFC 9112 does not allow with 400 and closes the
// connection, as net/http's path does.
func (fc *fastConn) refuse() {
	fc.e.log.Debug("request refused: its framing is not RFC 9112's", "client", fc.ip)
	_ = fc.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = io.WriteString(fc.c, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400 Bad Request")
	fc.lingerClose()
}

// lingerClose half-closes the connection and reads what the client still
// sends for a moment, so that the answer is not lost to a reset.
func (fc *fastConn) lingerClose() {
	if cw, ok := fc.c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = fc.c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, _ = io.CopyN(io.Discard, fc.c, 256<<10)
	}
}

// handOff gives the connection, with the bytes read and not yet served in
// front, to the port's net/http server behind the guard; the connection
// stays there.
func (fc *fastConn) handOff() bool {
	if len(fc.r) > 0 {
		fc.e.metrics.fastHanded.Inc()
		fastHandedCount.Add(1)
	}
	_ = fc.c.SetReadDeadline(time.Time{})
	if !fc.wdl.IsZero() {
		_ = fc.c.SetWriteDeadline(time.Time{}) // net/http sets its own
	}
	pc := &peekConn{Conn: fc.c, buf: append([]byte(nil), fc.r...)}
	fc.r = nil
	fc.ps.conns.remove(fc.tracked)
	if fc.tls != nil {
		fc.ps.q.push(fc.e.guard(pc, fc.tls))
	} else {
		fc.ps.q.push(fc.e.guard(pc, nil))
	}
	return true
}

// request serves the request whose head is fc.h and takes headLen bytes
// of fc.r. native is false for a request the fast path leaves to net/http
// (nothing was consumed then); keep says the connection serves on.
func (fc *fastConn) request(headLen int) (keep, native bool) {
	h := &fc.h
	e := fc.e
	switch {
	case h.upgrade, h.http10, h.chunked, h.expect, h.hosts != 1:
		return false, false
	case h.length > int64(len(fc.r)-headLen) && !fc.readBody(headLen, h.length):
		// A body larger than a buffer, or slower than a head may be,
		// is read under the body rules (body.go) on net/http's path.
		return false, false
	}
	if len(h.target) == 0 || h.target[0] != '/' {
		// Absolute form (its host, not Host, names the app for
		// net/http) and "*": net/http's path.
		return false, false
	}
	if e.cfg.Certs != nil && bytes.Contains(h.target, []byte("well-known")) {
		return false, false // ACME HTTP-01 (certs.Source.HTTPChallenge), however encoded
	}
	host := normalizeHost(string(h.host))
	app := e.table.Snapshot().names[host]
	if app == nil || (fc.ps.app != "" && app.name != fc.ps.app) || app.suspended != nil || app.statics != nil {
		return false, false
	}
	pr := app.ports[fc.ps.port]
	switch {
	case pr == nil || !pr.chain.http || pr.chain.h2Backend || len(pr.backends) == 0:
		return false, false
	case fc.tls == nil && (pr.chain.forceHTTPS || pr.chain.tls):
		return false, false // force_https's redirect (http.go)
	}
	if app.load.active.Add(1) > int32(min(e.limits.MaxConnsPerApp, noLimit)) {
		app.load.active.Add(-1)
		return false, false // net/http's path answers 503 (admit)
	}
	e.metrics.fastNative.Inc()
	fastNativeCount.Add(1)
	start := time.Now()
	st := &reqState{id: newRequestID(), port: fc.ps.portStr(), portN: fc.ps.port, host: host, app: app.name, appLoad: app.load, fastIn: h.length}
	st.demand = e.demand.begin(app.name)
	outBuf := fastOuts.Get().(*[]byte)
	fc.out = (*outBuf)[:0]
	defer func() {
		if cap(fc.out) <= 64<<10 {
			*outBuf = fc.out[:0]
			fastOuts.Put(outBuf)
		}
		fc.out = nil
	}()
	// The head's bytes stay in fc.r until the request ends: the parsed
	// slices point there.
	fc.body = fc.r[headLen : headLen+int(h.length)]
	status, written, keep := fc.proxy(st)
	fc.r = fc.r[headLen+int(h.length):]
	if h.connClose {
		keep = false
	}
	path := h.target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	e.finishRequest(fc.ps.ctx, st, start, string(h.method), string(h.host), string(path), "HTTP/1.1", fc.addr, status, written)
	return keep, true
}

// readBody takes the rest of a small body (with its head, up to a
// buffer) if the client has sent it already: it never waits on the
// client. It says false for a body too large, not all there yet, or on a
// TLS connection (whose records cannot be read without waiting); its
// bytes so far stay in fc.r for net/http, which reads the rest under the
// body rules. The head is parsed again if it moved to a larger buffer.
func (fc *fastConn) readBody(headLen int, length int64) bool {
	total := int64(headLen) + length
	tc := rawTCP(fc.c)
	if total > fastBufSize || tc == nil {
		return false
	}
	if fc.buf == nil || &fc.r[0] != &(*fc.buf)[0] {
		if fc.buf == nil {
			fc.buf = fastBufs.Get().(*[]byte)
		}
		fc.r = (*fc.buf)[:copy(*fc.buf, fc.r)]
		if !parseHead(fc.r[:headLen-2], &fc.h) {
			return false // cannot be: it parsed before
		}
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	buf := *fc.buf
	for int64(len(fc.r)) < total {
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			m, _, rerr = unix.Recvfrom(int(fd), buf[len(fc.r):total], unix.MSG_DONTWAIT)
			return true // never wait
		}); err != nil || rerr != nil || m <= 0 {
			return false
		}
		fc.r = buf[:len(fc.r)+m]
	}
	return true
}

// rawTCP is the TCP connection under c, if reading it directly skips no
// buffered bytes; nil otherwise (TLS, a peeked connection with bytes in
// hand).
func rawTCP(c net.Conn) *net.TCPConn {
	for {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *guardedConn:
			c = v.Conn
		case *peekConn:
			if len(v.buf) > 0 {
				return nil
			}
			c = v.Conn
		default:
			return nil
		}
	}
}

// portStr is the port as the headers carry it.
func (ps *portServer) portStr() string { return strconv.Itoa(ps.port) }

// answer writes one of the edge's own answers (answers.go's, written into
// a fastAnswer) to the client; it says whether the connection serves on.
func (fc *fastConn) answer(st *reqState, a *fastAnswer, keep bool) (int, int64, bool) {
	status := a.status
	if status == 0 {
		status = http.StatusOK
	}
	out := fc.out[:0]
	out = append(out, "HTTP/1.1 "...)
	out = strconv.AppendInt(out, int64(status), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(status)...)
	out = append(out, "\r\n"...)
	for k, vs := range a.h {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			out = append(out, k...)
			out = append(out, ": "...)
			out = append(out, v...)
			out = append(out, "\r\n"...)
		}
	}
	out = append(out, hdrRequestID+": "...)
	out = append(out, st.id...)
	out = append(out, "\r\nServer: "+serverName+"\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(a.body.Len()), 10)
	if !keep {
		out = append(out, "\r\nConnection: close"...)
	}
	out = append(out, "\r\n\r\n"...)
	out = append(out, a.body.Bytes()...)
	fc.out = out
	fc.sendDeadline()
	if _, err := fc.c.Write(out); err != nil {
		return status, 0, false
	}
	return status, int64(a.body.Len()), keep
}

// fastAnswer is the http.ResponseWriter the edge's own answers
// (answers.go) are written into on the fast path.
type fastAnswer struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (a *fastAnswer) Header() http.Header {
	if a.h == nil {
		a.h = http.Header{}
	}
	return a.h
}

func (a *fastAnswer) WriteHeader(code int) {
	if a.status == 0 {
		a.status = code
	}
}

func (a *fastAnswer) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return a.body.Write(p)
}

// viaValue is this hop's Via entry for an HTTP/1.1 request.
const viaValue = "1.1 perch"

// isHopHeader says whether a request header field is one the edge does not
// pass on: hop-by-hop fields, the forwarding headers the edge sets itself
// (a client cannot choose them) and those the Connection header names.
func (fc *fastConn) isHopHeader(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "Te")
	case 3:
		return equalFold(name, "Via")
	case 7:
		return equalFold(name, "Trailer") || equalFold(name, "Upgrade")
	case 10:
		return equalFold(name, "Connection") || equalFold(name, "Keep-Alive") || equalFold(name, "Fly-Region")
	}
	if len(name) > 4 && equalFold(name[:4], "Fly-") || len(name) > 6 && equalFold(name[:6], "Perch-") {
		switch {
		case equalFold(name, hdrFlyClientIP), equalFold(name, hdrFlyForwardedPort), equalFold(name, hdrFlyForwardedProto),
			equalFold(name, hdrFlyForwardedSSL), equalFold(name, hdrFlyRequestID),
			equalFold(name, hdrRegion), equalFold(name, hdrClientIP), equalFold(name, hdrRequestID),
			equalFold(name, hdrForwardedPort), equalFold(name, hdrReplaySrc):
			return true
		}
	}
	if len(name) > 12 && equalFold(name[:12], "X-Forwarded-") {
		return true // For is kept apart and appended to
	}
	switch {
	case equalFold(name, "Proxy-Connection"), equalFold(name, "Proxy-Authenticate"), equalFold(name, "Proxy-Authorization"),
		equalFold(name, "Transfer-Encoding"):
		return true
	}
	for _, tok := range fc.connTokens {
		if equalFold(tok, string(name)) {
			return true
		}
	}
	return false
}

// splitTokens sets fc.connTokens to the field names the request's
// Connection header lists, once per request.
func (fc *fastConn) splitTokens() {
	fc.connTokens = fc.connTokens[:0]
	for _, v := range fc.h.connNames {
		for len(v) > 0 {
			i := bytes.IndexByte(v, ',')
			if i < 0 {
				i = len(v)
			}
			if tok := bytes.Trim(v[:i], " \t"); len(tok) > 0 {
				fc.connTokens = append(fc.connTokens, tok)
			}
			v = v[min(i+1, len(v)):]
		}
	}
}

// appendRequest appends the head the machine gets: the client's request
// line and fields but the hop-by-hop ones, then the edge's own (as
// rewrite in headers.go sets them on net/http's path), then replaySrc's
// Perch-Replay-Src if set.
func (fc *fastConn) appendRequest(out []byte, st *reqState, replaySrc string) []byte {
	h := &fc.h
	out = append(out, h.method...)
	out = append(out, ' ')
	out = append(out, h.target...)
	out = append(out, " HTTP/1.1\r\n"...)
	var xff, via []byte
	xffN, viaN := 0, 0
	fc.splitTokens()
	for _, line := range h.lines {
		name, value, _ := fieldLine(line)
		if fc.isHopHeader(name) {
			switch {
			case equalFold(name, "X-Forwarded-For"):
				if xffN > 0 {
					xff = append(xff, ", "...)
				}
				xff = append(xff, value...)
				xffN++
			case equalFold(name, "Via"):
				if viaN > 0 {
					via = append(via, ", "...)
				}
				via = append(via, value...)
				viaN++
			case equalFold(name, "Te") && equalFold(value, "trailers"):
				out = append(out, "Te: trailers\r\n"...)
			}
			continue
		}
		out = append(out, line...)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Forwarded-For: "...)
	if xffN > 0 {
		out = append(out, xff...)
		out = append(out, ", "...)
	}
	out = append(out, fc.ip...)
	out = append(out, "\r\nX-Forwarded-Host: "...)
	out = append(out, h.host...)
	proto, ssl := "http", "off"
	if fc.tls != nil {
		proto, ssl = "https", "on"
	}
	out = append(out, "\r\nX-Forwarded-Proto: "...)
	out = append(out, proto...)
	out = appendField(out, "X-Forwarded-Port", st.port)
	out = appendField(out, hdrForwardedPort, st.port)
	out = appendField(out, hdrRegion, fc.e.cfg.Region)
	out = appendField(out, hdrClientIP, fc.ip)
	out = appendField(out, hdrRequestID, st.id)
	out = appendField(out, hdrFlyClientIP, fc.ip)
	out = appendField(out, hdrFlyRegion, fc.e.cfg.Region)
	out = appendField(out, hdrFlyForwardedPort, st.port)
	out = appendField(out, hdrFlyForwardedProto, proto)
	out = appendField(out, hdrFlyForwardedSSL, ssl)
	out = appendField(out, hdrFlyRequestID, st.id)
	out = append(out, "\r\nVia: "...)
	if viaN > 0 {
		out = append(out, via...)
		out = append(out, ", "...)
	}
	out = append(out, viaValue...)
	if replaySrc != "" {
		out = appendField(out, hdrReplaySrc, replaySrc)
	}
	out = append(out, "\r\n\r\n"...)
	return append(out, fc.body...)
}

// appendField appends CRLF name ": " value (the caller ends the head).
func appendField(out []byte, name, value string) []byte {
	out = append(out, "\r\n"...)
	out = append(out, name...)
	out = append(out, ": "...)
	return append(out, value...)
}

// idempotent says a request that met a dead kept-alive connection may go
// again on a new one, as net/http's transport decides.
func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// methodIs compares a parsed method.
func methodIs(method []byte, m string) bool { return string(method) == m }
