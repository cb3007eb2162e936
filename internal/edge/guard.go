package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"sync"
)

// RFC 9112 message framing, checked before net/http parses a request.
//
// net/http is lenient where RFC 9112 allows it to be: it processes a request
// with both Transfer-Encoding: chunked and Content-Length as chunked (and
// keeps the connection open), joins obsolete line folding, accepts bare LF
// as a line end and answers an unknown transfer coding with 501. An edge in
// front of other HTTP implementations must not: every request whose framing
// another parser could read differently is refused with 400 and the
// connection closed (request smuggling, RFC 9112 section 11.2). guardConn
// sits between the client connection and net/http's reader and checks each
// request head, then follows the body's framing (Content-Length or chunked)
// to find where the next request starts.

// guardMaxChunkLine bounds a chunk-size line (with extensions) or a trailer
// line of a chunked body.
const guardMaxChunkLine = 4096

// guardRefusal is what guardConn hands net/http in place of a refused
// request: a request line net/http itself rejects with 400 Bad Request and
// Connection: close, after it has answered the requests before it.
var guardRefusal = []byte("REFUSED\r\n\r\n")

var errBadChunked = errors.New("edge: malformed chunked request body; connection closed")

type guardState int

const (
	gHead      guardState = iota // expecting a request head
	gBody                        // n bytes of a Content-Length body
	gChunkSize                   // a chunk-size line
	gChunkData                   // n bytes of chunk data
	gChunkCRLF                   // the CRLF after chunk data
	gTrailer                     // trailer lines up to the empty line
	gPass                        // after an upgrade or CONNECT, or HTTP/2: bytes pass unchecked
	gDead                        // refused: nothing more is read
)

// guardConn checks the HTTP/1 requests read from a client connection.
type guardConn struct {
	net.Conn
	tls     *tls.ConnectionState // the TLS state of a terminated connection, for r.TLS
	maxHead int                  // net/http's own limit: MaxHeaderBytes + 4096

	state   guardState
	n       int64   // bytes left of a body or chunk
	upgrade bool    // the body ends in gPass
	started bool    // the first bytes were seen (HTTP/2 preface check)
	raw     []byte  // bytes read and not yet checked
	out     []byte  // checked bytes, for net/http (in raw's memory)
	err     error   // the read error after out
	buf     *[]byte // borrowed from guardBufs while raw lives in it
}

func newGuardConn(c net.Conn, maxHeaderBytes int, state *tls.ConnectionState) *guardConn {
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = http.DefaultMaxHeaderBytes
	}
	return &guardConn{Conn: c, tls: state, maxHead: maxHeaderBytes + 4096}
}

func (g *guardConn) Read(p []byte) (int, error) {
	for {
		if len(g.out) > 0 {
			n := copy(p, g.out)
			g.out = g.out[n:]
			if len(g.out) == 0 && len(g.raw) == 0 {
				g.out, g.raw = nil, nil
				g.release()
			}
			return n, nil
		}
		if g.err != nil {
			return 0, g.err
		}
		if len(g.raw) == 0 {
			switch g.state {
			case gPass:
				return g.Conn.Read(p)
			case gBody, gChunkData:
				// Body bytes go straight to the reader, up to the
				// body's (or chunk's) end.
				n, err := g.Conn.Read(p[:min(int64(len(p)), g.n)])
				g.n -= int64(n)
				if g.n == 0 {
					if g.state == gBody {
						g.state = g.afterBody()
					} else {
						g.state = gChunkCRLF
					}
				}
				return n, err
			}
			// A new head or chunk line is read into the reader's own
			// buffer and, most often whole, checked and handed over in
			// place: an idle connection holds no buffer of the guard's.
			n, err := g.Conn.Read(p)
			if n == 0 {
				if err != nil {
					// Not kept: net/http interrupts its background read
					// with a deadline in the past and then reads on.
					return 0, err
				}
				continue
			}
			g.raw = p[:n]
			if !g.needMore() {
				g.step() // out is then p's first bytes
			}
			if len(g.raw) > 0 {
				g.keep() // the rest must outlive p
			}
			continue
		}
		// A part of a head or chunk line is kept: it is checked only
		// once it is whole (or over the limits), however many reads that
		// takes.
		if g.needMore() {
			if n, err := g.fill(); n == 0 && err != nil {
				return 0, err
			}
			if g.needMore() {
				continue
			}
		}
		g.step()
	}
}

// guardBufSize is the size of the buffers a connection borrows from
// guardBufs while it holds a part of a request head or chunk line, or
// bytes read past the request in hand.
const guardBufSize = 4096

// guardMinRead is the least room fill reads into.
const guardMinRead = 1024

var guardBufs = sync.Pool{New: func() any { b := make([]byte, 0, guardBufSize); return &b }}

// keep copies raw, which is in the reader's buffer, into one of guardBufs.
func (g *guardConn) keep() {
	g.release()
	b := guardBufs.Get().(*[]byte)
	*b = append((*b)[:0], g.raw...)
	g.buf, g.raw = b, *b
}

// fill reads more of the connection onto the end of raw (out is empty).
func (g *guardConn) fill() (int, error) {
	if cap(g.raw)-len(g.raw) < guardMinRead {
		if g.buf != nil && len(g.raw)+guardMinRead <= cap(*g.buf) {
			// Room at the front of the borrowed buffer.
			n := copy((*g.buf)[:cap(*g.buf)], g.raw)
			g.raw = (*g.buf)[:n]
		} else {
			// A head larger than a buffer: one of its own, up to maxHead.
			nb := make([]byte, len(g.raw), 2*len(g.raw)+guardBufSize)
			copy(nb, g.raw)
			g.release()
			g.raw = nb
		}
	}
	n, err := g.Conn.Read(g.raw[len(g.raw):cap(g.raw)])
	g.raw = g.raw[:len(g.raw)+n]
	return n, err
}

// release gives the borrowed buffer back; raw and out no longer use it.
func (g *guardConn) release() {
	if g.buf != nil && cap(*g.buf) == guardBufSize {
		guardBufs.Put(g.buf)
	}
	g.buf = nil
}

// needMore says the buffered bytes cannot be checked yet.
func (g *guardConn) needMore() bool {
	switch g.state {
	case gHead:
		if g.h2Preface() {
			return len(g.raw) < 24
		}
		return !bytes.Contains(g.raw, []byte("\r\n\r\n")) && !g.badLineEnd(g.raw) && len(g.raw) < g.maxHead
	case gChunkSize, gTrailer:
		return bytes.IndexByte(g.raw, '\n') < 0 && len(g.raw) < guardMaxChunkLine
	case gChunkCRLF:
		return len(g.raw) < 2
	}
	return false
}

// h2Preface says the connection starts with HTTP/2's preface (h2c with
// prior knowledge), or could still.
func (g *guardConn) h2Preface() bool {
	const preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	if g.started || len(g.raw) == 0 {
		return false
	}
	n := min(len(g.raw), len(preface))
	return string(g.raw[:n]) == preface[:n]
}

// badLineEnd says b holds a CR not followed by LF or an LF not preceded
// by CR.
func (g *guardConn) badLineEnd(b []byte) bool {
	for i, c := range b {
		switch {
		case c == '\n' && (i == 0 || b[i-1] != '\r'):
			return true
		case c == '\r' && i+1 < len(b) && b[i+1] != '\n':
			return true
		}
	}
	return false
}

// emit moves n checked bytes of raw to out (the same memory).
func (g *guardConn) emit(n int) {
	g.out = g.raw[:n:n]
	g.raw = g.raw[n:]
}

// refuse replaces the rest of the connection with a request net/http
// answers with 400 and closes on.
func (g *guardConn) refuse() {
	g.out = guardRefusal[:len(guardRefusal):len(guardRefusal)] // only read from
	g.raw, g.state, g.err = nil, gDead, net.ErrClosed
}

// cut ends a connection whose body framing broke after its head was
// forwarded.
func (g *guardConn) cut(err error) {
	g.out, g.raw, g.state, g.err = nil, nil, gDead, err
}

// step checks what it can of raw and moves it to out.
func (g *guardConn) step() {
	switch g.state {
	case gPass:
		g.emit(len(g.raw))
	case gHead:
		if g.h2Preface() { // needMore waited for all 24 bytes
			g.state = gPass
			g.emit(len(g.raw))
			return
		}
		g.started = true
		end := bytes.Index(g.raw, []byte("\r\n\r\n"))
		// The head, or what there is of it, up to net/http's limit: the
		// same bytes however many reads brought them.
		head := g.raw
		if end >= 0 {
			head = g.raw[:end+4]
		}
		if g.badLineEnd(head[:min(len(head), g.maxHead)]) {
			g.refuse()
			return
		}
		if end < 0 || end > g.maxHead {
			// Too large: net/http stops at the same limit and answers 431.
			g.state = gPass
			g.emit(len(g.raw))
			return
		}
		f, ok := checkHead(g.raw[:end+2])
		if !ok {
			g.refuse()
			return
		}
		g.upgrade = f.upgrade
		switch {
		case f.chunked:
			g.state = gChunkSize
		case f.length > 0:
			g.state, g.n = gBody, f.length
		default:
			g.state = g.afterBody()
		}
		g.emit(end + 4)
	case gBody, gChunkData:
		n := int(min(int64(len(g.raw)), g.n))
		g.n -= int64(n)
		if g.n == 0 {
			if g.state == gBody {
				g.state = g.afterBody()
			} else {
				g.state = gChunkCRLF
			}
		}
		g.emit(n)
	case gChunkCRLF:
		if g.raw[0] != '\r' || g.raw[1] != '\n' {
			g.cut(errBadChunked)
			return
		}
		g.state = gChunkSize
		g.emit(2)
	case gChunkSize:
		i := bytes.IndexByte(g.raw, '\n')
		if i < 1 || g.raw[i-1] != '\r' {
			g.cut(errBadChunked)
			return
		}
		size, ok := chunkSize(g.raw[:i-1])
		if !ok {
			g.cut(errBadChunked)
			return
		}
		if size == 0 {
			g.state = gTrailer
		} else {
			g.state, g.n = gChunkData, size
		}
		g.emit(i + 1)
	case gTrailer:
		i := bytes.IndexByte(g.raw, '\n')
		if i < 1 || g.raw[i-1] != '\r' {
			g.cut(errBadChunked)
			return
		}
		line := g.raw[:i-1]
		if len(line) == 0 {
			g.state = g.afterBody()
		} else if _, _, ok := fieldLine(line); !ok {
			g.cut(errBadChunked)
			return
		}
		g.emit(i + 1)
	}
}

func (g *guardConn) afterBody() guardState {
	if g.upgrade {
		return gPass
	}
	return gHead
}

// framing is what a request head says about its body.
type framing struct {
	length  int64
	chunked bool
	upgrade bool // an Upgrade request or CONNECT: what follows is not HTTP/1
}

// checkHead checks a request head (request line and header lines, each
// ending in CRLF, without the empty line) against RFC 9112 and says how
// its body is framed (parseHead, headparse.go).
func checkHead(head []byte) (framing, bool) {
	var h reqHead
	ok := parseHead(head, &h)
	return h.framing, ok
}

// fieldLine splits name ":" OWS value OWS, refusing obsolete line folding
// (a line starting with whitespace), whitespace before the colon, names
// that are not tokens and values with control characters.
func fieldLine(line []byte) (name, value []byte, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i < 1 {
		return nil, nil, false
	}
	name = line[:i]
	for _, c := range name {
		if !isTchar(c) {
			return nil, nil, false
		}
	}
	value = line[i+1:]
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, false
		}
	}
	return name, bytes.Trim(value, " \t"), true
}

// decimal parses a Content-Length: digits only, no sign, list or spaces.
func decimal(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// chunkSize parses chunk-size [ chunk-ext ] of a chunk line without CRLF.
func chunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line) && i < 16; i++ {
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	if len(rest) > 0 && rest[0] != ';' && rest[0] != ' ' && rest[0] != '\t' {
		return 0, false
	}
	for _, c := range rest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return c != 0 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// equalFold says whether b is s but for the case of ASCII letters, as
// net/http compares tokens (its ascii.EqualFold): bytes.EqualFold's
// Unicode folding would take "\u212a" (the Kelvin sign) for "k", and
// costs more.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		if c, d := b[i], s[i]; c != d && lower(c) != lower(d) {
			return false
		}
	}
	return true
}

// lower is c in lower case if it is an ASCII letter.
func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// tlsStateKey holds, in a connection's context, the TLS state of a
// guarded connection: net/http sets r.TLS only for a *tls.Conn.
type tlsStateKey struct{}

func guardConnContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok && g.tls != nil {
		return context.WithValue(ctx, tlsStateKey{}, g.tls)
	}
	return ctx
}

// withTLSState gives requests of guarded TLS connections their r.TLS.
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			if st, ok := r.Context().Value(tlsStateKey{}).(*tls.ConnectionState); ok {
				r.TLS = st
			}
		}
		h.ServeHTTP(w, r)
	})
}

// CloseWrite lets net/http half-close the connection after an error
// answer (431), so that the client reads it before the connection goes.
func (g *guardConn) CloseWrite() error {
	c := g.Conn
	if pc, ok := c.(*peekConn); ok {
		c = pc.Conn
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
