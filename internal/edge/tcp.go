package edge

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
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
	ch := ar.ports[port].chain
	st := &tcpState{id: newRequestID(), port: port, host: host, app: ar.name}
	if ar.load.active.Add(1) > int32(min(e.limits.MaxConnsPerApp, noLimit)) {
		ar.load.active.Add(-1)
		e.log.Debug("raw TCP connection refused: app at its cap on this edge", "app", ar.name, "cap", e.limits.MaxConnsPerApp)
		return
	}
	defer ar.load.active.Add(-1)

	mc, err := e.connectTCP(ctx, st)
	defer st.release()
	if err != nil {
		e.log.Warn("raw TCP: no machine could be reached", "app", ar.name, "port", port, "attempts", st.attempts, "err", err)
		e.tcpLog(client, st, start, 0, 0, err)
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
	e.tcpLog(client, st, start, up, down, nil)
}

// tcpState follows one raw TCP connection, for the access log.
type tcpState struct {
	id       string
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
	ctx, cancel := context.WithTimeout(ctx, e.limits.QueueTimeout+e.handshakeTimeout())
	defer cancel()
	f := &filter{}
	var lastErr error
	for range maxAttempts {
		b, _, err := e.acquire(ctx, dest{host: st.host, port: st.port}, f)
		if err != nil {
			if lastErr != nil && errors.Is(err, errNoCandidate) {
				return nil, lastErr
			}
			return nil, err
		}
		st.backend, st.slot = b, b.load
		st.attempts++
		c, err := e.cfg.Dialer.DialContext(ctx, "tcp", b.Addr, b.Target)
		if err == nil {
			b.load.connected()
			return c, nil
		}
		b.load.refused()
		st.release()
		f.exclude = append(f.exclude, b.Target.MachineID)
		lastErr = err
		e.log.Debug("machine refused connection, trying the next one", "app", st.app, "machine", b.Target.MachineID, "err", err)
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
		slog.String("client", addrPort(client.RemoteAddr()).Addr().Unmap().String()),
		slog.String("port", strconv.Itoa(st.port)),
		slog.String("app", st.app),
		slog.String("machine", machine),
		slog.String("machine_region", region),
		slog.Int("attempts", st.attempts),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int64("bytes_in", up),
		slog.Int64("bytes_out", down),
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	e.accessLog.LogAttrs(context.Background(), slog.LevelInfo, "tcp connection", attrs...)
}
