package mesh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// RelayPort is the TCP port on every host's mesh address where the host
// takes connections for its machines. The netstack terminates TCP only on
// the node's own address, so a connection to a machine on another host is
// a connection to that host's relay that names the machine first.
const RelayPort = 4280

// The relay's handshake: the dialer sends "PERCH-RELAY1 [6pn]:port\n", the
// relay answers "OK\n" once it is connected to the machine, or
// "ERR <reason>\n" and closes. Waiting for the answer costs one round trip
// on a new connection, and buys what the edge needs: a refused machine is
// a failed connect, which it retries on another machine, never a request
// lost half-way.
//
// "PERCH-RELAY1 udp [6pn]:port\n" asks for a UDP flow instead: after the
// "OK\n", each datagram travels both ways as a frame, a 2-byte big-endian
// length and the datagram (DialRelayUDP). The connection's end ends the
// flow.
const relayMagic = "PERCH-RELAY1 "

// relayUDP marks a UDP flow's request.
const relayUDP = "udp "

// relayTimeout bounds the handshake on both sides, once its request has
// started to arrive.
const relayTimeout = 10 * time.Second

// RelayIdle is how long a relay keeps a connection that has not sent its
// request yet: a RelayPool opens connections ahead of need and hands them
// out for up to RelayIdle/2.
const RelayIdle = 60 * time.Second

// ErrRelayRefused is returned by DialRelay when the far host answered but
// could not connect to the machine.
var ErrRelayRefused = errors.New("mesh: relay refused")

// RelayTarget maps a machine address a relay was asked for to the address
// to dial on this host; an error refuses the connection (an address that
// is not one of this host's machines).
type RelayTarget func(target netip.AddrPort) (string, error)

// ServeRelay accepts relay connections on the node's mesh address until ctx
// is done, dialling each one's machine through target and then copying
// bytes both ways.
func (n *Node) ServeRelay(ctx context.Context, target RelayTarget, log *slog.Logger) error {
	return n.ServeRelayObserved(ctx, target, nil, log)
}

// RelayObserver is told of each relay connection once it is connected to
// its machine (addr, what target gave); the relay calls done when the
// connection ends. The host's autostop counts them as the machine's
// activity.
type RelayObserver func(addr string) (done func())

// ServeRelayObserved is ServeRelay telling observe (if not nil) of every
// connection it carries.
func (n *Node) ServeRelayObserved(ctx context.Context, target RelayTarget, observe RelayObserver, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := n.Listen(RelayPort)
	if err != nil {
		return fmt.Errorf("mesh: relay: %w", err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("mesh: relay accept: %w", err)
		}
		wg.Go(func() { serveRelayConn(ctx, c, target, observe, log) })
	}
}

func serveRelayConn(ctx context.Context, c net.Conn, target RelayTarget, observe RelayObserver, log *slog.Logger) {
	defer c.Close()
	// The relay stops with its host: open connections end too.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	// A pooled connection waits idle for its request (RelayIdle); the
	// request, once begun, has relayTimeout to arrive.
	_ = c.SetDeadline(time.Now().Add(RelayIdle))
	br := bufio.NewReaderSize(c, 128)
	if _, err := br.Peek(1); err != nil {
		return
	}
	_ = c.SetDeadline(time.Now().Add(relayTimeout))
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	refuse := func(why string) {
		_, _ = io.WriteString(c, "ERR "+why+"\n")
		// A pipelined request may follow the line unread: closing now
		// would reset the connection and could drop the answer on its way
		// (an RST discards what the peer has not read). Half-close, and let
		// the dialer close first.
		closeWrite(c)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = io.Copy(io.Discard, br)
	}
	rest, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), relayMagic)
	if !ok {
		refuse("not a relay request")
		return
	}
	network := "tcp"
	if r, udp := strings.CutPrefix(rest, relayUDP); udp {
		network, rest = "udp", r
	}
	ap, err := netip.ParseAddrPort(rest)
	if err != nil {
		refuse("bad target")
		return
	}
	addr, err := target(ap)
	if err != nil {
		log.Debug("relay refused", "target", ap, "from", c.RemoteAddr(), "err", err)
		refuse(err.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, relayTimeout)
	var d net.Dialer
	m, err := d.DialContext(dctx, network, addr)
	cancel()
	if err != nil {
		refuse("machine refused the connection")
		return
	}
	defer m.Close()
	if observe != nil {
		defer observe(addr)()
	}
	stopM := context.AfterFunc(ctx, func() { m.Close() })
	defer stopM()
	if _, err := io.WriteString(c, "OK\n"); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})
	if network == "udp" {
		spliceFrames(c, br, m)
		return
	}
	splice(c, br, m)
}

// splice copies both ways until both directions are done, passing each
// half-close on.
func splice(c net.Conn, cr io.Reader, m net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(m, cr)
		closeWrite(m)
		close(done)
	}()
	_, _ = io.Copy(c, m)
	closeWrite(c)
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	_ = c.Close()
}

// DialRelayUDP opens a UDP flow to the machine at target through the relay
// of the host whose mesh address is host. The connection it returns keeps
// datagrams apart: each Write sends one, each Read returns one (cut to the
// buffer, as a UDP socket does).
func (n *Node) DialRelayUDP(ctx context.Context, host netip.Addr, target netip.AddrPort) (net.Conn, error) {
	c, err := n.dialRelay(ctx, host, relayUDP+target.String(), target)
	if err != nil {
		return nil, err
	}
	return newFrameConn(c), nil
}

// DialRelay connects to the machine at target (its 6PN address and port)
// through the relay of the host whose mesh address is host. It returns once
// the far host is connected to the machine; ErrRelayRefused if it could not.
func (n *Node) DialRelay(ctx context.Context, host netip.Addr, target netip.AddrPort) (net.Conn, error) {
	return n.dialRelay(ctx, host, target.String(), target)
}

// dialRelay sends the relay request for what (a target, or "udp " and a
// target) and waits for the answer.
func (n *Node) dialRelay(ctx context.Context, host netip.Addr, what string, target netip.AddrPort) (net.Conn, error) {
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(host, RelayPort).String())
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := io.WriteString(c, relayMagic+what+"\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("mesh: relay to %s: %w", host, err)
	}
	// Read the answer a byte at a time: what follows it is the machine's.
	var line []byte
	b := make([]byte, 1)
	for len(line) < 256 {
		if _, err := c.Read(b); err != nil {
			c.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("mesh: relay to %s: %w", host, ctx.Err())
			}
			return nil, fmt.Errorf("mesh: relay to %s: %w", host, err)
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	if s := string(line); s != "OK" {
		c.Close()
		return nil, fmt.Errorf("%w: %s for %s: %s", ErrRelayRefused, host, target, strings.TrimPrefix(s, "ERR "))
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// DialRelayPipelined connects to the machine at target through the relay
// of the host whose mesh address is host, like DialRelay, but returns once
// the TCP connection is up and the relay request sent, without waiting for
// the answer: what the caller writes next travels right behind the request
// line, and a request's first answer comes one round trip after the
// connect instead of two. The relay's answer is read by the first Read: a
// refusal fails it with an error wrapping ErrRelayRefused, and then the
// relay passed none of what was written on (it keeps a machine's bytes
// until it has connected to the machine).
func (n *Node) DialRelayPipelined(ctx context.Context, host netip.Addr, target netip.AddrPort) (net.Conn, error) {
	c, err := n.DialContext(ctx, "tcp", netip.AddrPortFrom(host, RelayPort).String())
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, relayMagic+target.String()+"\n"); err != nil {
		c.Close()
		return nil, fmt.Errorf("mesh: relay to %s: %w", host, err)
	}
	return &pipelinedConn{Conn: c, host: host, target: target}, nil
}

// pipelinedConn reads the relay's answer before the machine's bytes.
type pipelinedConn struct {
	net.Conn
	host   netip.Addr
	target netip.AddrPort

	mu       sync.Mutex
	answered bool
	err      error // the refusal, for every Read after it
}

func (c *pipelinedConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.answered {
		c.answered = true
		c.err = c.readAnswer()
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(p)
}

// readAnswer reads the relay's answer; what follows is the machine's.
func (c *pipelinedConn) readAnswer() error {
	_, err := readRelayAnswer(c.Conn, c.host, c.target)
	return err
}

// CloseWrite passes a half-close on.
func (c *pipelinedConn) CloseWrite() error {
	closeWrite(c.Conn)
	return nil
}
