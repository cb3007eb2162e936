package edge

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"
)

// dispatch sends a new connection of public port ps down the chain of the
// app it is for (chain.go). Connections of a port with one raw TCP app, or
// with only plain HTTP apps, go on without a look at their bytes, so that
// protocols where the server speaks first work; on other ports the first
// bytes decide.
func (e *Edge) dispatch(workers *connWorkers, ps *portServer, c net.Conn) {
	m := e.table.Snapshot().modeFor(ps) // anycast.go
	switch {
	case m == nil:
		c.Close() // the port is going away
	case !m.peek && m.raw == nil && !e.fast():
		ps.q.push(e.guard(c, nil))
	case !m.peek && m.raw == nil:
		if ps.conns.add(c) {
			workers.run(func() { e.serveFast(ps, c, nil, c) }) // fast.go
		}
	case ps.conns.add(c):
		workers.run(func() {
			defer ps.conns.remove(c)
			if !m.peek {
				e.proxyTCP(ps.ctx, c, m.rawHost, ps.port, "")
				return
			}
			e.sniff(ps, c, m)
		})
	}
}

// sniff reads a connection's first bytes and, for TLS, its ClientHello, to
// choose the app: the one whose name the client asked for (SNI), else the
// port's raw TCP app, else a TLS or plain HTTP app found later by the Host
// header.
func (e *Edge) sniff(ps *portServer, c net.Conn, m *portMode) {
	pc := &peekConn{Conn: c}
	_ = c.SetReadDeadline(time.Now().Add(e.handshakeTimeout()))
	if err := pc.fill(1); err != nil {
		c.Close()
		return
	}
	if pc.buf[0] != recordTypeHandshake {
		_ = c.SetReadDeadline(time.Time{})
		switch {
		case m.raw != nil:
			e.proxyTCP(ps.ctx, pc, m.rawHost, ps.port, "")
		case m.plain && e.fast():
			e.serveFast(ps, pc, nil, c)
		case m.plain:
			ps.conns.remove(c)
			ps.q.push(e.guard(pc, nil))
		default:
			e.notTLS(pc, ps.port)
		}
		return
	}
	hello, err := pc.peekClientHello()
	if err != nil {
		e.log.Debug("unreadable ClientHello", "port", ps.port, "client", c.RemoteAddr().String(), "err", err)
	}
	var pr *portRoute
	if ar := e.table.Snapshot().names[hello.serverName]; ar != nil && hello.serverName != "" && (ps.app == "" || ar.name == ps.app) {
		pr = ar.ports[ps.port]
	}
	switch {
	case pr != nil && pr.chain.tls:
		e.serveTLS(ps, pc, pr, hello.serverName)
	case pr != nil && pr.chain.passthrough():
		_ = c.SetReadDeadline(time.Time{})
		e.proxyTCP(ps.ctx, pc, hello.serverName, ps.port, hello.serverName)
	case m.raw != nil:
		_ = c.SetReadDeadline(time.Time{})
		e.proxyTCP(ps.ctx, pc, m.rawHost, ps.port, hello.serverName)
	case m.tls && err == nil:
		e.serveTLS(ps, pc, nil, hello.serverName)
	default:
		e.log.Debug("TLS connection for a name no app serves on this port", "port", ps.port, "server_name", hello.serverName)
		c.Close()
	}
}

// serveTLS terminates TLS and hands the connection to the HTTP server, or
// for a chain without "http" to the app's machine. pr is nil when the
// client named no app of the port: the certificate source still decides,
// and the Host header then picks the app.
func (e *Edge) serveTLS(ps *portServer, pc *peekConn, pr *portRoute, sni string) {
	var ch *chain
	if pr != nil {
		ch = pr.chain
	}
	tc, err := e.terminate(ps.ctx, pc, ch)
	if err != nil {
		e.log.Debug("TLS handshake failed", "port", ps.port, "client", pc.RemoteAddr().String(), "server_name", sni, "err", err)
		return
	}
	_ = tc.SetReadDeadline(time.Time{})
	if ch == nil || ch.http {
		st := tc.ConnectionState()
		if st.NegotiatedProtocol != "h2" && e.fast() {
			e.serveFast(ps, tc, &st, pc.Conn) // fast.go
			return
		}
		ps.conns.remove(pc.Conn)
		if st.NegotiatedProtocol != "h2" {
			ps.q.push(e.guard(tc, &st)) // HTTP/1 over TLS
		} else {
			ps.q.push(tc)
		}
		return
	}
	e.proxyTCP(ps.ctx, tc, sni, ps.port, sni)
}

// notTLS answers a plain connection to a port that only speaks TLS: an
// HTTP client gets a 400 that says so, anything else is closed.
func (e *Edge) notTLS(pc *peekConn, port int) {
	defer pc.Close()
	if b := pc.buf[0]; b >= 'A' && b <= 'Z' {
		msg := "perch: port " + strconv.Itoa(port) + " speaks TLS; use https://\n"
		_ = pc.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(pc, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(msg), msg)
	}
}

// guard puts the RFC 9112 framing checks (guard.go) in front of the HTTP
// server's reading of an HTTP/1 connection.
func (e *Edge) guard(c net.Conn, state *tls.ConnectionState) net.Conn {
	return newGuardConn(c, e.limits.MaxHeaderBytes, state)
}
