package edge

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// statusClientGone is logged for a request whose client left before the
// machine answered (nginx's convention).
const statusClientGone = 499

// maxAttempts bounds how many machines one request tries to connect to.
const maxAttempts = 3

type (
	stateKey   struct{}
	backendKey struct{}
)

// reqState follows one request through the proxy, for the access log.
type reqState struct {
	id       string
	port     string
	app      string
	choice   choice
	backend  *Backend // the last machine tried
	attempts int
}

// portHandler serves the HTTP requests of one public port.
type portHandler struct {
	e       *Edge
	port    int
	portStr string
}

func (h *portHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	st := &reqState{id: newRequestID(), port: h.portStr}
	w.Header().Set(hdrRequestID, st.id)
	lw := &logWriter{ResponseWriter: w}
	defer h.e.accessLog(lw, r, st, start)

	host := normalizeHost(r.Host)
	app := h.e.table.Snapshot().names[host]
	if app == nil {
		h.e.noApp(lw, host)
		return
	}
	st.app = app.name
	pr := app.ports[h.port]
	switch {
	case pr == nil:
		noService(lw, app.name, h.port)
	case len(pr.backends) == 0:
		noMachine(lw, app.name)
	default:
		st.choice = pr.choose()
		h.e.proxy.ServeHTTP(lw, r.WithContext(context.WithValue(r.Context(), stateKey{}, st)))
	}
}

func (e *Edge) newProxy() http.Handler {
	tr := &http.Transport{
		DialContext:           e.dialMachine,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Bodies pass through as the machine sent them.
		DisableCompression: true,
	}
	return &httputil.ReverseProxy{
		Rewrite:       e.rewrite,
		Transport:     &retryTransport{base: tr, log: e.log},
		FlushInterval: -1, // stream: every write of the machine reaches the client at once
		BufferPool:    bufferPool{},
		ErrorLog:      slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		ErrorHandler:  e.proxyError,
		ModifyResponse: func(res *http.Response) error {
			res.Header.Del(hdrRequestID) // the edge's id is the one the client sees
			return nil
		},
	}
}

// dialError marks a failure to connect to a machine: nothing was sent, so
// another machine may be tried.
type dialError struct{ err error }

func (d *dialError) Error() string { return d.err.Error() }
func (d *dialError) Unwrap() error { return d.err }

func (e *Edge) dialMachine(ctx context.Context, network, addr string) (net.Conn, error) {
	var t Target
	if b, ok := ctx.Value(backendKey{}).(*Backend); ok {
		t = b.Target
	}
	c, err := e.cfg.Dialer.DialContext(ctx, network, addr, t)
	if err != nil {
		return nil, &dialError{err: err}
	}
	return c, nil
}

// retryTransport sends a request to the machines of its choice in turn,
// moving on only when a connection could not be made and the request has no
// body (a body is consumed by the first attempt).
type retryTransport struct {
	base http.RoundTripper
	log  *slog.Logger
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st := req.Context().Value(stateKey{}).(*reqState)
	n := min(st.choice.len(), maxAttempts)
	var err error
	for i := range n {
		b := st.choice.at(i)
		st.backend, st.attempts = b, i+1
		r := req.WithContext(context.WithValue(req.Context(), backendKey{}, b))
		u := *req.URL
		u.Host = b.Addr
		r.URL = &u
		var res *http.Response
		res, err = t.base.RoundTrip(r)
		if err == nil {
			return res, nil
		}
		var de *dialError
		if !errors.As(err, &de) || (req.Body != nil && req.Body != http.NoBody) || req.Context().Err() != nil {
			return nil, err
		}
		t.log.Debug("machine refused connection, trying the next one", "request_id", st.id,
			"app", st.app, "machine", b.Target.MachineID, "err", err)
	}
	return nil, err
}

func (e *Edge) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(stateKey{}).(*reqState)
	if r.Context().Err() != nil {
		if lw, ok := w.(*logWriter); ok {
			lw.status = statusClientGone
		}
		return // nobody reads an answer
	}
	e.log.Warn("could not proxy to machine", "request_id", st.id, "app", st.app, "err", err)
	unreachable(w, st)
}

// bufferPool reuses the proxy's copy buffers.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
