package edge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/proxyproto"
)

// proxyTCP connects a client to a machine of the app known as host on
// public port and copies bytes both ways until both sides are done: raw TCP
// (TLS passthrough included) or what is left after the edge terminated
// TLS. With "proxy_proto" the machine first gets a PROXY protocol header
// naming the client. A machine that refuses the connection is skipped for
// the next, as for HTTP.
func (e *Edge) proxyTCP(ctx context.Context, client net.Conn, host string, port int, sni string) {
	defer client.Close()
	start := time.Now()
	ar := e.table.Snapshot().names[host]
	if ar == nil || ar.ports[port] == nil {
		return // the app went meanwhile
	}
	pr := ar.ports[port]
	ch := pr.chain
	st := &tcpState{id: newRequestID(), port: port, host: host, app: ar.name}
	if ar.suspended != nil { // budget.go
		e.refuseTCP(client, st, start, rejectSuspended, fmt.Sprintf("app %s is %s", ar.name, ar.suspended.Message()))
		return
	}
	if ar.load.active.Add(1) > int32(min(e.limits.MaxConnsPerApp, noLimit)) {
		ar.load.active.Add(-1)
		e.metrics.rejected.WithLabelValues("app_cap").Inc()
		e.refuseTCP(client, st, start, rejectAppCap, fmt.Sprintf("app %s has %d connections open at this edge, its cap", ar.name, e.limits.MaxConnsPerApp))
		return
	}
	defer ar.load.active.Add(-1)

	mc, err := e.connectTCP(ctx, st)
	defer st.release()
	if err != nil {
		if ctx.Err() != nil {
			e.tcpLog(client, st, start, 0, 0, err) // the edge is stopping
			return
		}
		reason, why := e.whyNoMachine(st, pr, err)
		e.log.Debug("raw TCP: no machine to go to", "app", ar.name, "port", port, "attempts", st.attempts, "reason", reason, "err", err)
		e.refuseTCP(client, st, start, reason, why)
		return
	}
	defer mc.Close()
	if ch.proxyProto != 0 {
		h := proxyproto.Header{Version: ch.proxyProto, Source: addrPort(client.RemoteAddr()), Destination: addrPort(client.LocalAddr()), Authority: sni}
		_ = mc.SetWriteDeadline(time.Now().Add(e.handshakeTimeout()))
		if _, err := h.WriteTo(mc); err != nil {
			e.tcpLog(client, st, start, 0, 0, err)
			return
		}
		_ = mc.SetWriteDeadline(time.Time{})
	}
	up, down := splice(client, mc)
	e.egress.add(st.app, down) // budget.go
	e.tcpLog(client, st, start, up, down, nil)
}

// tcpState follows one raw TCP connection, for the access log.
type tcpState struct {
	id       string
	reason   string // why the edge closed it without a machine; "" if it did not
	port     int
	host     string // the app's key in Snapshot.names
	app      string
	backend  *Backend // the last machine tried
	slot     *load    // the slot held on backend
	attempts int
}

func (st *tcpState) release() {
	if st.slot != nil {
		st.slot.release()
		st.slot = nil
	}
}

// connectTCP takes a slot on a machine (limits.go) and connects to it,
// moving to the next machine when one refuses.
func (e *Edge) connectTCP(ctx context.Context, st *tcpState) (net.Conn, error) {
	return e.connect(ctx, "tcp", dest{host: st.host, port: st.port}, st)
}

// connect takes a slot on a machine of d (limits.go), held while one
// starts when none is in rotation (autostart.go), and dials it over
// network, moving to the next machine when one refuses: raw TCP's
// connections and UDP's flows.
func (e *Edge) connect(ctx context.Context, network string, d dest, st *tcpState) (net.Conn, error) {
	wait := e.limits.QueueTimeout + e.handshakeTimeout()
	if pr := e.route(d); pr != nil && e.wakeable(pr) {
		wait += e.limits.StartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	f := &filter{}
	var lastErr error
	for range maxAttempts {
		b, _, err := e.acquire(ctx, d, f)
		if err != nil {
			if lastErr != nil && errors.Is(err, errNoCandidate) {
				return nil, lastErr
			}
			return nil, err
		}
		st.backend, st.slot = b, b.load
		st.attempts++
		c, err := e.cfg.Dialer.DialContext(ctx, network, b.Addr, b.Target)
		if err == nil {
			b.load.connected()
			return c, nil
		}
		b.load.refused()
		st.release()
		f.exclude = append(f.exclude, b.Target.MachineID)
		lastErr = err
		e.log.Debug("machine refused connection, trying the next one", "app", st.app, "machine", b.Target.MachineID, "network", network, "err", err)
	}
	return nil, lastErr
}

// splice copies a to b and b to a until both directions end. The end of
// one direction is passed on as a half-close, so protocols that send a last
// answer after the client is done work; an error closes both.
func splice(a, b net.Conn) (ab, ba int64) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var err error
		ab, err = io.Copy(b, a)
		finish(b, a, err)
	}()
	var err error
	ba, err = io.Copy(a, b)
	finish(a, b, err)
	<-done
	return ab, ba
}

// finish ends the direction that writes to dst: half-close after a clean
// end, close both after an error.
func finish(dst, src net.Conn, err error) {
	if err != nil {
		dst.Close()
		src.Close()
		return
	}
	if cw, ok := unwrapConn(dst).(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		return
	}
	dst.Close()
}

// unwrapConn is the connection under the edge's own wrappers, for its
// CloseWrite (tls.Conn and TCP connections have one).
func unwrapConn(c net.Conn) net.Conn {
	if pc, ok := c.(*peekConn); ok {
		return pc.Conn
	}
	return c
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// tcpLog writes the access log line of a raw TCP connection.
func (e *Edge) tcpLog(client net.Conn, st *tcpState, start time.Time, up, down int64, err error) {
	var machine, region string
	if st.backend != nil {
		machine, region = st.backend.Target.MachineID, st.backend.Target.Region
	}
	attrs := []slog.Attr{
		slog.String("connection_id", st.id),
		slog.String("client", clientAddr(client)),
		slog.String("port", strconv.Itoa(st.port)),
		slog.String("app", st.app),
		slog.String("machine", machine),
		slog.String("machine_region", region),
		slog.Int("attempts", st.attempts),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int64("bytes_in", up),
		slog.Int64("bytes_out", down),
	}
	if st.reason != "" {
		attrs = append(attrs, slog.String("reason", st.reason))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	e.accessLog.LogAttrs(context.Background(), slog.LevelInfo, "tcp connection", attrs...)
}

func clientAddr(c net.Conn) string { return addrPort(c.RemoteAddr()).Addr().Unmap().String() }

// Why a raw TCP connection was closed without a machine: the reason label
// of perch_edge_tcp_rejected_total and of the access log.
const (
	rejectNoMachine   = "no_machine"  // no machine of the app is in rotation for the port
	rejectUnreachable = "unreachable" // every machine tried failed to connect
	rejectBusy        = "busy"        // every machine stayed at its hard limit
	rejectAppCap      = "app_cap"     // the app's connections at this edge are at their cap
	rejectNotStarted  = "not_started" // no machine was in rotation and none could be started in time
)

// refuseTCP closes (the caller's defer does) a raw TCP connection the edge
// takes nowhere, and says why: in the access log, the metrics, and the
// app's own log.
func (e *Edge) refuseTCP(client net.Conn, st *tcpState, start time.Time, reason, why string) {
	st.reason = reason
	e.metrics.tcpRejected.WithLabelValues(st.app, reason).Inc()
	e.tcpLog(client, st, start, 0, 0, errors.New(why))
	e.appLogs.log(st.app, fmt.Sprintf("raw TCP connection from %s to port %d closed: %s", clientAddr(client), st.port, why))
}

// whyNoMachine explains err, connectTCP's, in words the app's owner
// understands, and gives its reason label.
func (e *Edge) whyNoMachine(st *tcpState, pr *portRoute, err error) (reason, why string) {
	var we *wakeError
	switch {
	case errors.As(err, &we):
		return rejectNotStarted, fmt.Sprintf("no machine to go to: app %s had no started machine for port %d and none could be started in time: %v", st.app, st.port, we.err)
	case errors.Is(err, errBusy):
		e.metrics.rejected.WithLabelValues("busy").Inc()
		return rejectBusy, fmt.Sprintf("no machine to go to: every machine of app %s for port %d is at its concurrency hard limit and none freed up in %s",
			st.app, st.port, e.limits.QueueTimeout)
	case errors.Is(err, errNoCandidate) && st.attempts == 0 && pr.unhealthy > 0:
		return rejectNoMachine, fmt.Sprintf("no machine to go to: app %s has no healthy machine for port %d (%s failing health checks)",
			st.app, st.port, plural(pr.unhealthy, "started machine"))
	case errors.Is(err, errNoCandidate) && st.attempts == 0:
		return rejectNoMachine, fmt.Sprintf("no machine to go to: app %s has no started machine for port %d", st.app, st.port)
	}
	return rejectUnreachable, fmt.Sprintf("no machine to go to: app %s has started machines for port %d but none could be reached: %s tried (%s)",
		st.app, st.port, plural(st.attempts, "machine"), dialFailure(err))
}

// dialFailure is a short account of why a connection to a machine failed.
func dialFailure(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "dial timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the machine"
	}
	return err.Error()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}
