package edge

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Request bodies. A client that sends its body slowly must not hold what
// other clients need: a machine's slot under its hard limit above all.
//
//   - A body of known length up to Limits.BodyBufferBytes is read whole by
//     the edge before the request takes a machine slot (nginx's request
//     buffering): a slow small body holds only its own connection. The
//     buffers are bounded per client address and in all (bufferPerClient).
//   - Any body is read within Apache mod_reqtimeout's rule: it may pause
//     at most BodyTimeout, and after a grace of BodyTimeout it must keep an
//     average of BodyMinRate bytes per second (only the time the edge waits
//     on the client counts, not the time the machine takes to read). A body
//     that falls behind is cut and the request gets 408.
//   - A larger body (or one of unknown length) streams to the machine as it
//     arrives, and while it does the request counts against its client
//     address's MaxUploadsPerClient, and against half the app's slots on
//     the port (its machines' hard limits summed); past either, 429. One
//     address cannot take every slot of an app with uploads that never end.
//
// Ports whose service speaks h2c to the app (http_options.h2_backend, the
// gRPC path) are exempt: a gRPC stream's body is a conversation that may
// stay quiet for as long as the app likes.

// errBodyTooSlow is the error a request body's reader gives once the
// client fell behind the body rules.
var errBodyTooSlow = errors.New("edge: the client sent the request body too slowly")

// bodyReader reads a request body within the body rules, and gives back
// the client's upload slot (if it holds one) once the body has ended.
type bodyReader struct {
	rc      io.ReadCloser
	ctl     *http.ResponseController
	timeout time.Duration
	minRate int

	read   int64
	waited time.Duration         // time spent blocked on the client
	slow   atomic.Pointer[error] // why the body was cut for falling behind
	end    func()                // gives back the upload slot; at most once
	once   sync.Once
}

func (b *bodyReader) Read(p []byte) (int, error) {
	deadline := b.timeout > 0
	if deadline {
		allowed := b.allowed()
		if allowed <= 0 {
			return 0, b.tooSlow()
		}
		// An error here (a protocol without read deadlines) leaves the
		// read unbounded; the header timeout and caps still hold.
		_ = b.ctl.SetReadDeadline(time.Now().Add(allowed))
	}
	start := time.Now()
	n, err := b.rc.Read(p)
	b.waited += time.Since(start)
	b.read += int64(n)
	if deadline {
		// Between reads the machine has the time: an HTTP/2 stream's
		// deadline would fire while the app is slow to read, and past
		// the body one left on an HTTP/1.1 connection would cut the
		// server's background read and cancel the request.
		_ = b.ctl.SetReadDeadline(time.Time{})
	}
	if err == nil {
		return n, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = b.tooSlow()
	}
	b.done()
	return n, err
}

// allowed is how long the next read may wait for the client: what is
// left of the grace and of the bytes' earned time, at most BodyTimeout.
func (b *bodyReader) allowed() time.Duration {
	earned := b.timeout - b.waited
	if b.minRate > 0 {
		earned += time.Duration(min(float64(b.read)/float64(b.minRate)*float64(time.Second), math.MaxInt64/2))
	} else {
		earned = b.timeout // no rate: only the pause is bounded
	}
	return min(earned, b.timeout)
}

func (b *bodyReader) tooSlow() error {
	err := fmt.Errorf("%w: %d bytes in %s", errBodyTooSlow, b.read, b.waited.Round(time.Millisecond))
	b.slow.CompareAndSwap(nil, &err)
	b.done()
	return err
}

// cut is why the body was cut for falling behind, or nil (also for a
// nil b: a request with no body under the rules).
func (b *bodyReader) cut() error {
	if b == nil {
		return nil
	}
	if p := b.slow.Load(); p != nil {
		return *p
	}
	return nil
}

func (b *bodyReader) done() {
	b.once.Do(func() {
		if b.end != nil {
			b.end()
		}
	})
}

func (b *bodyReader) Close() error {
	b.done()
	return b.rc.Close()
}

// Buffered bodies are bounded in memory: a client address may have at
// most bufferPerClient of BodyBufferBytes bodies buffered at once, and the
// edge bufferTotal of them (1 MiB and 64 MiB at the defaults); a body
// beyond either streams instead, as an upload. An HTTP/2 client can open
// hundreds of streams per connection, so a bound per request is not one.
const (
	bufferPerClient = 16
	bufferTotal     = 1024
)

// uploads counts per client address the requests whose body is streaming
// to a machine (in all, and per app), and the bytes of bodies being
// buffered.
type uploads struct {
	mu       sync.Mutex
	n        map[netip.Addr]int
	perApp   map[clientApp]int
	buffered map[netip.Addr]int64
	total    int64 // buffered, all clients
}

type clientApp struct {
	ip  netip.Addr
	app string
}

// take counts one more upload for ip to app, unless ip is at max in all
// or at appMax for app; it says which cap it met, or "".
func (u *uploads) take(ip netip.Addr, app string, max, appMax int) (full string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	ca := clientApp{ip, app}
	switch {
	case u.n[ip] >= max:
		return "edge"
	case u.perApp[ca] >= appMax:
		return "app"
	}
	if u.n == nil {
		u.n, u.perApp = map[netip.Addr]int{}, map[clientApp]int{}
	}
	u.n[ip]++
	u.perApp[ca]++
	return ""
}

func (u *uploads) give(ip netip.Addr, app string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[ip]--; u.n[ip] <= 0 {
		delete(u.n, ip)
	}
	ca := clientApp{ip, app}
	if u.perApp[ca]--; u.perApp[ca] <= 0 {
		delete(u.perApp, ca)
	}
}

// uploadsPerApp is how many uploads one client address may stream to the
// machines of port route pr at once: half their slots (hard limits summed),
// at least one, so that one address never holds them all.
func uploadsPerApp(pr *portRoute) int {
	slots := 0
	for _, b := range pr.backends {
		if b.hard >= noLimit {
			return noLimit
		}
		slots += int(b.hard)
	}
	if slots == 0 {
		return noLimit // none in rotation yet (autostart): the edge's cap alone
	}
	return max(1, slots/2)
}

// buffer reserves n bytes of buffer for ip, unless that would pass
// perClient for it or total for the edge.
func (u *uploads) buffer(ip netip.Addr, n, perClient, total int64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.buffered[ip]+n > perClient || u.total+n > total {
		return false
	}
	if u.buffered == nil {
		u.buffered = map[netip.Addr]int64{}
	}
	u.buffered[ip] += n
	u.total += n
	return true
}

func (u *uploads) unbuffer(ip netip.Addr, n int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.total -= n
	if u.buffered[ip] -= n; u.buffered[ip] <= 0 {
		delete(u.buffered, ip)
	}
}

// takeBody applies the body rules to r before it takes a machine slot: it
// reads a small body whole, or counts a streaming one against its
// client's uploads, and bounds the reading of either. It answers 408 or
// 429 itself and says whether the request may go on.
func (e *Edge) takeBody(w http.ResponseWriter, r *http.Request, pr *portRoute, st *reqState) bool {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 || pr.chain.h2Backend {
		return true
	}
	ip, err := netip.ParseAddr(clientIP(r.RemoteAddr))
	if err == nil {
		ip = ip.Unmap()
	}
	b := &bodyReader{rc: r.Body, ctl: http.NewResponseController(w), timeout: e.limits.BodyTimeout, minRate: e.limits.BodyMinRate}
	if n, max := r.ContentLength, int64(e.limits.BodyBufferBytes); n > 0 && n <= max &&
		e.uploads.buffer(ip, n, bufferPerClient*max, bufferTotal*max) {
		st.buffered = func() { e.uploads.unbuffer(ip, n) }
		buf, err := io.ReadAll(b)
		if err != nil {
			e.badBody(w, r, st, b, err)
			return false
		}
		r.Body = io.NopCloser(bytes.NewReader(buf))
		// The client got its 100 Continue from the edge; the machine has
		// the whole body at once.
		r.Header.Del("Expect")
		return true
	}
	appMax := noLimit // MaxUploadsPerClient off turns both caps off
	if e.limits.MaxUploadsPerClient < noLimit {
		appMax = uploadsPerApp(pr)
	}
	if full := e.uploads.take(ip, st.app, e.limits.MaxUploadsPerClient, appMax); full != "" {
		e.metrics.rejected.WithLabelValues("upload_cap").Inc()
		w.Header().Set("Retry-After", "1")
		closeHTTP1(w, r)
		msg := fmt.Sprintf("perch: your address already has %d request bodies uploading through this edge, its cap; finish one before starting another.", e.limits.MaxUploadsPerClient)
		if full == "app" {
			msg = fmt.Sprintf("perch: your address already has %d request bodies uploading to app %q, half of what its machines take at once; finish one before starting another.", appMax, st.app)
		}
		http.Error(w, msg, http.StatusTooManyRequests)
		return false
	}
	app := st.app
	b.end = func() { e.uploads.give(ip, app) }
	st.in = b
	r.Body = b
	return true
}

// badBody answers a request whose small body could not be read whole.
func (e *Edge) badBody(w http.ResponseWriter, r *http.Request, st *reqState, b *bodyReader, err error) {
	if cut := b.cut(); cut != nil {
		e.bodyTooSlow(w, r, st, cut)
		return
	}
	if lw, ok := w.(*logWriter); ok && r.Context().Err() != nil {
		lw.status = statusClientGone
		return
	}
	closeHTTP1(w, r)
	http.Error(w, fmt.Sprintf("perch: the request body ended before its Content-Length of %d bytes: %v", r.ContentLength, err), http.StatusBadRequest)
}

// closeHTTP1 says an HTTP/1.x connection ends with this answer: the rest
// of the request's body is not read. (An HTTP/2 stream is reset alone; a
// "Connection: close" there would end the client's other streams.)
func closeHTTP1(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		w.Header().Set("Connection", "close")
	}
}

// bodyTooSlow answers 408 to a request whose body fell behind (cut says
// how far it came).
func (e *Edge) bodyTooSlow(w http.ResponseWriter, r *http.Request, st *reqState, cut error) {
	e.metrics.rejected.WithLabelValues("body_timeout").Inc()
	e.log.Debug("request body too slow", "request_id", st.id, "app", st.app, "err", cut)
	closeHTTP1(w, r)
	http.Error(w, fmt.Sprintf("perch: the request body arrived too slowly (%v); the edge wants at least %d bytes/s after %s and no pause over %s.",
		cut, e.limits.BodyMinRate, e.limits.BodyTimeout, e.limits.BodyTimeout), http.StatusRequestTimeout)
}
