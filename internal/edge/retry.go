package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
)

// maxAttempts bounds how many machines one request tries to connect to.
const maxAttempts = 3

// dialError marks a failure to connect to a machine: nothing was sent, so
// another machine may be tried.
type dialError struct{ err error }

func (d *dialError) Error() string { return d.err.Error() }
func (d *dialError) Unwrap() error { return d.err }

// dialMachine is the DialContext of the transports to machines: it hands
// the Dialer the machine's Target and marks failures as dialErrors.
func (e *Edge) dialMachine(ctx context.Context, network, addr string) (net.Conn, error) {
	var t Target
	if b, ok := ctx.Value(backendKey{}).(*Backend); ok {
		t, addr = b.Target, b.Addr // addr is the pool's name for the machine
	}
	// send() takes ErrNotDelivered as a failed connect. Not for h2c
	// backends: HTTP/2's transport does not hand the error back whole.
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok && !st.h2c {
		t.Pipelined = true
	}
	c, err := e.cfg.Dialer.DialContext(ctx, network, addr, t)
	if err != nil {
		return nil, &dialError{err: err}
	}
	if t.Pipelined {
		return &pipelinedConn{Conn: c}, nil
	}
	return c, nil
}

// pipelinedConn keeps a refusal seen by Read for the request's writer: the
// transport closes the connection when its reader gets ErrNotDelivered, and
// a write still in flight then fails with "use of closed connection" (or a
// closed pipe). net/http may hand back that write error instead of the read
// one, and send() would take a refused connection for one that reached its
// machine. After a refusal every failed Write wraps ErrNotDelivered too.
type pipelinedConn struct {
	net.Conn
	refused atomic.Bool
}

func (c *pipelinedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && errors.Is(err, ErrNotDelivered) {
		c.refused.Store(true)
	}
	return n, err
}

func (c *pipelinedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if err != nil && c.refused.Load() && !errors.Is(err, ErrNotDelivered) {
		err = fmt.Errorf("%w (writing after the refusal: %w)", ErrNotDelivered, err)
	}
	return n, err
}

// CloseWrite half-closes the connection, for upgraded (WebSocket)
// connections proxied as raw TCP.
func (c *pipelinedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// retryTransport sends a request to a machine it takes a slot on (choose.go),
// to the next machine when a connection cannot be made (nothing was sent
// yet, so the client never notices), and once more where a Perch-Replay
// answer says (replay.go). A request whose body reached a machine is never
// sent again on a failure.
type retryTransport struct {
	e    *Edge
	base http.RoundTripper
	log  *slog.Logger
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st := req.Context().Value(stateKey{}).(*reqState)
	var body *replayBody
	if req.Body != nil && req.Body != http.NoBody {
		body = newReplayBody(req.Body, req.ContentLength)
		st.body = body
	}
	res, err := t.send(req, st, dest{st.host, st.portN}, &filter{}, body)
	if err != nil {
		return nil, err
	}
	if spec := res.Header.Get(hdrReplay); spec != "" {
		return t.replay(req, st, res, spec, body)
	}
	return res, nil
}

// send tries the machines of d's route that f allows, up to maxAttempts
// of them, until one accepts a connection.
func (t *retryTransport) send(req *http.Request, st *reqState, d dest, f *filter, body *replayBody) (*http.Response, error) {
	var lastErr error
	for range maxAttempts {
		b, waited, err := t.e.acquire(req.Context(), d, f)
		st.queued += waited
		if err != nil {
			if lastErr != nil && errors.Is(err, errNoCandidate) {
				return nil, lastErr // every machine was tried
			}
			return nil, err
		}
		st.backend, st.slot = b, b.load
		st.attempts++
		r := req.WithContext(context.WithValue(req.Context(), backendKey{}, b))
		u := *req.URL
		u.Host = poolHost(b)
		r.URL = &u
		var a *attemptBody
		if body != nil {
			a = body.attempt()
			r.Body = a
		}
		res, err := t.base.RoundTrip(r)
		if err == nil {
			b.load.connected()
			return res, nil
		}
		var de *dialError
		switch {
		case req.Context().Err() != nil:
			return nil, err
		case errors.As(err, &de) && !a.sent():
		case errors.Is(err, ErrNotDelivered) && (body == nil || body.replayable()):
			// A pipelined connection that never reached its machine: the
			// body it took went nowhere, and is read again from the start.
		case t.e.lostOnTheWay(req, b, a):
			t.log.Info("machine's host became unreachable during the request; sending it to the next machine",
				"request_id", st.id, "app", st.app, "machine", b.Target.MachineID, "host", b.Target.HostID)
		default:
			return nil, err
		}
		b.load.refused()
		st.releaseSlot()
		f.exclude = append(f.exclude, b.Target.MachineID)
		lastErr = err
		t.log.Debug("machine refused connection, trying the next one", "request_id", st.id,
			"app", st.app, "machine", b.Target.MachineID, "err", err)
	}
	return nil, lastErr
}

// lostOnTheWay says whether a request that failed on machine b may go to
// another machine because b's host became unreachable while it was in
// flight (the mesh lost it: the edge closed its connections to it). Only
// requests that are safe to repeat qualify: GET, HEAD and OPTIONS with no
// body sent; anything else may have been acted on.
func (e *Edge) lostOnTheWay(req *http.Request, b *Backend, a *attemptBody) bool {
	if e.cfg.Reachable == nil || b.Target.Local || e.cfg.Reachable(b.Target.HostID) || a.sent() {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

// poolHost names machine b in the transport's URL, and so keys its pool
// of idle connections: by machine, not by address. A machine's private
// address is given to a later machine once it is destroyed, and an idle
// connection to the dead one must never carry a request to the new one (a
// POST on it fails, and is not repeated). dialMachine dials b.Addr.
func poolHost(b *Backend) string {
	_, port, err := net.SplitHostPort(b.Addr)
	if b.Target.MachineID == "" || err != nil {
		return b.Addr
	}
	return b.Target.MachineID + ".machine.perch.internal:" + port
}
