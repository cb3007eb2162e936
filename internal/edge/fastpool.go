package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The fast path's side towards machines: a keep-alive pool per machine
// service (keyed by its load, which is one machine's service and never
// another's, so an address a destroyed machine's successor got never gets
// a request meant for the old one), the retries of retryTransport.send and
// the Perch-Replay of replay.go, and the answer copied back with its own
// framing.

// fastMaxIdle bounds the idle connections kept per machine service.
const fastMaxIdle = 128

// backendConn is a connection to a machine with its read buffer.
type backendConn struct {
	net.Conn
	addr  string
	buf   []byte
	r     []byte          // read and not yet used, in buf
	raw   syscall.RawConn // the kernel socket, when it is one (exchange)
	idle  time.Time
	fresh bool // dialled for this request
}

// machinePools holds the idle connections to machines. An idle
// connection is closed once it has been idle for the edge's
// BackendIdleTimeout, by one timer for all of them (armed while any is
// kept), as net/http's transport does: not only at the next request. A
// kept connection to another host's machine is an open relay connection
// there, which that host's autostop counts as activity (agent's
// relayActivity): one kept past the last request would keep the machine
// from ever going idle.
type machinePools struct {
	mu      sync.Mutex
	idle    map[*load][]*backendConn
	timer   *time.Timer // closes expired ones; armed while any is kept
	armed   bool
	maxIdle time.Duration
}

// get takes an idle connection to addr of l, or nil.
func (p *machinePools) get(l *load, addr string, maxIdle time.Duration) *backendConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for list := p.idle[l]; len(list) > 0; list = p.idle[l] {
		bc := list[len(list)-1]
		list[len(list)-1] = nil
		p.idle[l] = list[:len(list)-1]
		if bc.addr != addr || (maxIdle > 0 && time.Since(bc.idle) > maxIdle) {
			bc.Close()
			continue
		}
		return bc
	}
	return nil
}

// put keeps bc for the next request to l's machine, for up to maxIdle (0:
// no limit).
func (p *machinePools) put(l *load, bc *backendConn, maxIdle time.Duration) {
	bc.idle, bc.fresh = time.Now(), false
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.idle == nil {
		p.idle = map[*load][]*backendConn{}
	}
	if len(p.idle[l]) >= fastMaxIdle {
		bc.Close()
		return
	}
	p.idle[l] = append(p.idle[l], bc)
	p.maxIdle = maxIdle
	if maxIdle > 0 && !p.armed {
		p.armed = true
		if p.timer == nil {
			p.timer = time.AfterFunc(maxIdle, p.expire)
		} else {
			p.timer.Reset(maxIdle)
		}
	}
}

// expire closes the connections idle for maxIdle and arms the timer
// again for the oldest of the rest.
func (p *machinePools) expire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := p.sweep(time.Now(), p.maxIdle)
	if len(p.idle) == 0 || p.maxIdle <= 0 { // sweep leaves no empty list
		p.armed = false
		return
	}
	p.timer.Reset(next)
}

// sweep closes connections idle for maxIdle or longer (p.mu held); it
// says when the next of the rest is due.
func (p *machinePools) sweep(now time.Time, maxIdle time.Duration) time.Duration {
	next := maxIdle
	for l, list := range p.idle {
		kept := list[:0]
		for _, bc := range list {
			if left := maxIdle - now.Sub(bc.idle); left <= 0 {
				bc.Close()
			} else {
				next = min(next, left)
				kept = append(kept, bc)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(p.idle, l)
		} else {
			p.idle[l] = kept
		}
	}
	return next
}

// closeAll closes every idle connection (the edge stops).
func (p *machinePools) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, list := range p.idle {
		for _, bc := range list {
			bc.Close()
		}
	}
	clear(p.idle)
	if p.timer != nil {
		p.timer.Stop()
	}
	p.armed = false
}

// dialFast connects to machine b, pipelined as dialMachine does for
// HTTP/1: a mesh relay that cannot reach the machine fails the first read
// with ErrNotDelivered.
func (e *Edge) dialFast(ctx context.Context, b *Backend) (*backendConn, error) {
	t := b.Target
	t.Pipelined = true
	c, err := e.cfg.Dialer.DialContext(ctx, "tcp", b.Addr, t)
	if err != nil {
		return nil, &dialError{err: err}
	}
	bc := &backendConn{Conn: &pipelinedConn{Conn: c}, addr: b.Addr, buf: make([]byte, fastBufSize), fresh: true}
	if tc, ok := c.(*net.TCPConn); ok {
		bc.raw, _ = tc.SyscallConn()
	}
	return bc, nil
}

// exchange writes a request to the machine and reads the first bytes of
// its answer into bc.r. On a kernel socket (bc.raw) it writes inside the
// netpoller's read wait, so that it then waits for the answer without the
// read that would find nothing yet (Go's Read tries first and waits on
// EAGAIN): one syscall and a park less per request. The write there comes
// after the wait is prepared (poll.FD.RawRead resets the readiness first),
// so an answer that comes at once is not missed. wrote says whether the
// whole request was written; read whether any answer byte came.
func (bc *backendConn) exchange(req []byte) (wrote, read bool, err error) {
	if bc.raw == nil || len(bc.r) > 0 {
		if _, err := bc.Write(req); err != nil {
			return false, false, err
		}
		return true, false, nil
	}
	sent := 0
	var m int
	var werr, rerr error
	err = bc.raw.Read(func(fd uintptr) bool {
		for sent < len(req) {
			n, e := unix.Write(int(fd), req[sent:])
			if n > 0 {
				sent += n
			}
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return true // the socket is full: the rest by Write
			case e != nil:
				werr = e
				return true
			}
			if sent == len(req) {
				return false // sent: wait for the answer, do not look yet
			}
		}
		for {
			n, _, e := unix.Recvfrom(int(fd), bc.buf, 0)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return false // not yet: wait for it
			case e != nil:
				rerr = e
			case n == 0:
				rerr = io.EOF
			}
			m = max(n, 0)
			return true
		}
	})
	switch {
	case err != nil:
		return false, false, err
	case werr != nil:
		return false, false, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", werr)}
	case sent < len(req):
		if _, err := bc.Write(req[sent:]); err != nil {
			return false, false, err
		}
		return true, false, nil
	case rerr == io.EOF && m == 0:
		return true, false, io.EOF
	case rerr != nil && m == 0:
		return true, false, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", rerr)}
	}
	bc.r = bc.buf[:m]
	return true, true, nil
}

// alive says whether a kept connection is still open: no end of stream
// or error waits on it (one non-blocking peek; a connection that is not
// a kernel socket, over the mesh, is taken as open).
func (bc *backendConn) alive() bool {
	sc, ok := bc.Conn.(*pipelinedConn).Conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	open := true
	var b [1]byte
	_ = rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		open = errors.Is(err, unix.EAGAIN) // not EOF, an error or stray bytes
		return true
	})
	return open
}

// resHead is a machine's response head, parsed in place.
type resHead struct {
	status  int
	line    []byte   // the status line
	lines   [][]byte // header field lines
	length  int64    // Content-Length, -1 if none
	chunked bool
	close   bool // the machine closes the connection after it
	replay  []byte
}

var errBadResponse = errors.New("edge: the machine's answer is not valid HTTP/1.1")

// readResponse reads the next final response head from bc into h (1xx
// heads are skipped) and says where it ends in bc.r (the index of its
// CRLFCRLF). read says whether any byte came.
func (bc *backendConn) readResponse(h *resHead) (end int, read bool, err error) {
	for {
		i := bytes.Index(bc.r, []byte("\r\n\r\n"))
		if i < 0 {
			if len(bc.r) == len(bc.buf) {
				return 0, true, fmt.Errorf("%w: its head is over %d bytes", errBadResponse, len(bc.buf))
			}
			n := copy(bc.buf, bc.r)
			m, rerr := bc.Conn.Read(bc.buf[n:])
			bc.r = bc.buf[:n+m]
			if m > 0 {
				read = true
			}
			if rerr != nil && m == 0 {
				return 0, read, rerr
			}
			continue
		}
		if err := parseResponse(bc.r[:i+2], h); err != nil {
			return 0, true, err
		}
		if h.status >= 100 && h.status < 200 && h.status != http.StatusSwitchingProtocols {
			bc.r = bc.r[i+4:] // informational: the final answer follows
			continue
		}
		return i, true, nil
	}
}

// parseResponse parses a response head (lines ending in CRLF, without
// the empty line).
func parseResponse(head []byte, h *resHead) error {
	lines := h.lines[:0]
	*h = resHead{lines: lines, length: -1}
	line, rest, more := cutLine(head[:len(head)-2])
	h.line = line
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil || code < 100 || (len(line) > 12 && line[12] != ' ') {
		return fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	h.status = code
	h.close = line[7] == '0'
	var te bool
	for more {
		line, rest, more = cutLine(rest)
		name, value, ok := fieldLine(line)
		if !ok {
			return fmt.Errorf("%w: header line %q", errBadResponse, line)
		}
		h.lines = append(h.lines, line)
		switch {
		case equalFold(name, "Content-Length"):
			n, ok := decimal(value)
			if !ok || (h.length >= 0 && n != h.length) {
				return fmt.Errorf("%w: Content-Length %q", errBadResponse, value)
			}
			h.length = n
		case equalFold(name, "Transfer-Encoding"):
			te = true
			h.chunked = equalFold(value, "chunked")
		case equalFold(name, "Connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				if equalFold(bytes.Trim(tok, " \t"), "close") {
					h.close = true
				}
			}
		case equalFold(name, hdrReplay):
			h.replay = value
		}
	}
	if te {
		h.length = -1
		if !h.chunked {
			h.close = true // read to the end of the connection
		}
	}
	return nil
}

// dropResponseHeader says whether a response field stays with the edge:
// hop-by-hop fields and those the edge sets itself.
func dropResponseHeader(name []byte, chunked bool) bool {
	switch {
	case equalFold(name, "Connection"), equalFold(name, "Keep-Alive"), equalFold(name, "Proxy-Connection"),
		equalFold(name, "Upgrade"), equalFold(name, "Te"),
		equalFold(name, hdrRequestID), equalFold(name, "Server"), equalFold(name, hdrReplay):
		return true
	case chunked && equalFold(name, "Content-Length"):
		return true
	}
	return false
}

// send tries the machines of d's route that f allows, up to maxAttempts of
// them, until one answers (retryTransport.send's rules). The answer's head
// is in fc.res and bc.r up to end.
func (fc *fastConn) send(st *reqState, d dest, f *filter, replaySrc string) (*backendConn, int, error) {
	e := fc.e
	var lastErr error
	for range maxAttempts {
		b, waited, err := fc.acquire(d, f)
		st.queued += waited
		if err != nil {
			if lastErr != nil && errors.Is(err, errNoCandidate) {
				return nil, 0, lastErr // every machine was tried
			}
			return nil, 0, err
		}
		st.backend, st.slot = b, b.load
		st.attempts++
		bc, end, err := fc.roundTrip(b, st, replaySrc)
		if err == nil {
			b.load.connected()
			return bc, end, nil
		}
		var de *dialError
		switch {
		case fc.ps.ctx.Err() != nil:
			return nil, 0, err
		case errors.As(err, &de), errors.Is(err, ErrNotDelivered):
			// Nothing reached the machine; the body is in memory.
		case len(fc.body) == 0 && e.lostOnTheWay(&http.Request{Method: string(fc.h.method)}, b, nil):
			e.log.Info("machine's host became unreachable during the request; sending it to the next machine",
				"request_id", st.id, "app", st.app, "machine", b.Target.MachineID, "host", b.Target.HostID)
		default:
			return nil, 0, err
		}
		b.load.refused()
		st.releaseSlot()
		f.exclude = append(f.exclude, b.Target.MachineID)
		lastErr = err
		e.log.Debug("machine refused connection, trying the next one", "request_id", st.id,
			"app", st.app, "machine", b.Target.MachineID, "err", err)
	}
	return nil, 0, lastErr
}

// acquire is Edge.acquire for the fast path. When every machine of the
// route is at its hard limit, so that the request will likely queue, the
// client connection is watched while it waits (the one read of the
// connection that is not the request loop's, as net/http's background
// read): a client that leaves gives up its place, as on net/http's path.
func (fc *fastConn) acquire(d dest, f *filter) (*Backend, time.Duration, error) {
	pr := fc.e.route(d)
	full := pr != nil && len(pr.backends) > 0
	if full {
		for _, b := range pr.backends {
			if b.hard >= noLimit || b.load.n.Load() < b.hard {
				full = false
				break
			}
		}
	}
	spare := fc.r[len(fc.r):cap(fc.r)]
	if !full || len(spare) == 0 {
		return fc.e.acquire(fc.ps.ctx, d, f)
	}
	ctx, cancel := context.WithCancel(fc.ps.ctx)
	defer cancel()
	read := make(chan int, 1)
	go func() {
		n, err := fc.c.Read(spare)
		if n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			fc.gone.Store(true)
			cancel()
		}
		read <- n
	}()
	b, waited, err := fc.e.acquire(ctx, d, f)
	_ = fc.c.SetReadDeadline(time.Unix(1, 0)) // ends the watching read
	n := <-read
	_ = fc.c.SetReadDeadline(time.Time{})
	fc.rdl = time.Time{}
	fc.r = fc.r[:len(fc.r)+n] // bytes of a next request, if any
	return b, waited, err
}

// roundTrip writes the request to machine b, on a kept connection if there
// is one, and reads the answer's head. A kept connection the machine has
// closed meanwhile costs nothing for a request that may be repeated: it
// goes again on another one.
func (fc *fastConn) roundTrip(b *Backend, st *reqState, replaySrc string) (*backendConn, int, error) {
	e := fc.e
	fc.out = fc.appendRequest(fc.out[:0], st, replaySrc)
	for try := 0; ; try++ {
		var bc *backendConn
		if try < 2 {
			bc = e.fastPool.get(b.load, b.Addr, e.limits.BackendIdleTimeout)
			if bc != nil && !idempotent(fc.h.method) && !bc.alive() {
				// Not to be sent again if the machine closed it
				// meanwhile: look first.
				bc.Close()
				bc = nil
			}
		}
		if bc == nil {
			var err error
			if bc, err = e.dialFast(fc.ps.ctx, b); err != nil {
				return nil, 0, err
			}
		}
		_, read, err := bc.exchange(fc.out)
		var end int
		if err == nil {
			var more bool
			end, more, err = bc.readResponse(&fc.res)
			read = read || more
		}
		if err == nil {
			return bc, end, nil
		}
		bc.Close()
		if bc.fresh || read || !idempotent(fc.h.method) {
			return nil, 0, err
		}
	}
}
