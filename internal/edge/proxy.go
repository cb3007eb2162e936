package edge

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// flushInterval bounds how long a response of known length waits in the
// edge's buffer before what has arrived of it goes to the client.
const flushInterval = 20 * time.Millisecond

// statusClientGone is logged for a request whose client left before the
// machine answered (nginx's convention).
const statusClientGone = 499

type (
	stateKey   struct{}
	backendKey struct{}
)

// reqState follows one request through the proxy, for the access log.
type reqState struct {
	id    string
	port  string
	portN int
	host  string // normalised Host: the app's key in the snapshot
	app   string
	h2c   bool // the port speaks h2c to machines (http_options.h2_backend)

	appLoad  *appLoad // counted in while the request is in flight
	backend  *Backend // the last machine tried
	slot     *load    // the slot held on backend; released when the request ends
	attempts int
	queued   time.Duration // time spent waiting for a slot
	replay   string        // the Perch-Replay answer the request followed
	body     *replayBody   // the request body, if any
	in       *bodyReader   // a streaming body under the body rules (body.go)
	buffered func()        // gives back a buffered body's reservation (body.go)
	demand   demandStart   // counted for the autoscaler (demand.go)
	static   bool          // answered from the app's statics (statics.go)
	fastIn   int64         // the body bytes the fast path read (fast.go)
}

// releaseSlot gives back the slot the request holds, if any.
func (st *reqState) releaseSlot() {
	if st.slot != nil {
		st.slot.release()
		st.slot = nil
	}
}

// portHandler serves the HTTP requests of one public port.
type portHandler struct {
	e       *Edge
	port    int
	portStr string
	only    string // on an app's own address: that app alone (anycast.go)
}

func (h *portHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &reqState{id: newRequestID(), port: h.portStr, portN: h.port}
	w.Header().Set(hdrRequestID, st.id)
	w.Header().Set("Server", serverName)
	lw := &logWriter{ResponseWriter: w}
	if r.ProtoMajor == 1 {
		// HTTP/2 has flow control per stream, and a stream's write
		// deadline there fires whether or not a write waits: it would
		// reset a quiet gRPC stream.
		lw.send = h.e.limits.SendTimeout
	}
	defer h.e.finish(lw, r, st, start)

	host := normalizeHost(r.Host)
	st.host = host
	app := h.e.table.Snapshot().names[host]
	if app == nil {
		h.e.noApp(lw, host)
		return
	}
	if h.only != "" && app.name != h.only {
		misdirected(lw, host, h.only)
		return
	}
	st.app = app.name
	st.demand = h.e.demand.begin(app.name)
	pr := app.ports[h.port]
	switch {
	case app.suspended != nil && pr != nil && pr.chain.http:
		suspended(lw, app.name, app.suspended, h.e.cfg.Clock) // budget.go
	case pr == nil || !pr.chain.http:
		noService(lw, app.name, h.port)
	case h.e.redirect(lw, r, pr): // force_https; http.go
	case app.statics != nil && h.e.serveStatic(lw, r, app.statics, st): // statics.go
	case len(pr.backends) == 0 && !h.e.wakeable(pr): // else held (autostart.go)
		noMachine(lw, app.name, pr.unhealthy)
	case !h.e.takeBody(lw, r, pr, st): // body.go
	case !h.e.admit(lw, app, st):
	default:
		st.h2c = pr.chain.h2Backend
		h.e.proxy.ServeHTTP(lw, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
	}
}

func (e *Edge) newProxy() http.Handler {
	tr := &http.Transport{
		DialContext:           e.dialMachine,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       e.limits.BackendIdleTimeout,
		ExpectContinueTimeout: time.Second,
		// Bodies pass through as the machine sent them.
		DisableCompression: true,
	}
	return &httputil.ReverseProxy{
		Rewrite:   e.rewrite,
		Transport: &retryTransport{e: e, base: e.backendTransport(tr), log: e.log},
		// Streams (text/event-stream, responses of unknown length: SSE,
		// chunked, gRPC) are flushed on every write anyway. Others are
		// flushed within flushInterval: flushing every write (-1) costs a
		// second syscall and a timer goroutine per response, a third of the
		// edge's throughput.
		FlushInterval: flushInterval,
		BufferPool:    bufferPool{},
		ErrorLog:      slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		ErrorHandler:  e.proxyError,
		ModifyResponse: func(res *http.Response) error {
			// The edge's id and name are the ones the client sees.
			res.Header.Del(hdrRequestID)
			res.Header.Del("Server")
			res.Header.Del(hdrReplay)
			return nil
		},
	}
}

func (e *Edge) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(stateKey{}).(*reqState)
	if cut := st.in.cut(); cut != nil {
		// Before the check below: the timed-out read cancelled the
		// request's context, but the client is there to read the 408.
		e.bodyTooSlow(w, r, st, cut)
		return
	}
	if r.Context().Err() != nil {
		if lw, ok := w.(*logWriter); ok {
			lw.status = statusClientGone
		}
		return // nobody reads an answer
	}
	if e.answerError(w, st, err) {
		return
	}
	e.log.Warn("could not proxy to machine", "request_id", st.id, "app", st.app, "err", err)
	unreachable(w, st)
}

// bufferPool reuses the proxy's copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
