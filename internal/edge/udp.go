package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// UDP services. A public UDP port belongs to one app (a datagram names no
// app, as plain TCP names none), the first by name when several claim it;
// the control plane refuses a second claim. Its route lives in the app's
// ports under udpKey, so machines are chosen, limited and woken exactly as
// for TCP. Every client address (a flow) gets one machine: the flow holds
// a slot on it, as a connection does, until it has been idle udpIdle, and
// its datagrams go to the machine's internal port straight from this host
// or, for another host's machine, as frames over the mesh relay
// (mesh.DialRelayUDP); the machine's answers go back from the public port.

// udpPortBase separates UDP route keys from TCP ports (at most 65535).
const udpPortBase = 1 << 16

func udpKey(port int) int             { return udpPortBase + port }
func isUDPKey(key int) bool           { return key >= udpPortBase }
func udpPortOf(key int) int           { return key - udpPortBase }
func udpDest(host string, p int) dest { return dest{host: host, port: udpKey(p)} }

// udpIdle ends a flow that carried no datagram either way for this long;
// udpQueue is how many datagrams a flow keeps while it finds its machine.
var (
	udpIdle  = 60 * time.Second
	udpQueue = 64
)

// udpOwners maps each public UDP port to the app that owns it: the first
// by name among those whose machines declare it.
func udpOwners(routes map[string]*appRoute, domain string) map[int]string {
	out := map[int]string{}
	for _, name := range slices.Sorted(maps.Keys(routes)) {
		for key := range routes[name].ports {
			if p := udpPortOf(key); isUDPKey(key) {
				if _, taken := out[p]; !taken {
					out[p] = name + "." + domain
				}
			}
		}
	}
	return out
}

// UDPPorts is the public UDP ports the snapshot serves, sorted.
func (s *Snapshot) UDPPorts() []int { return slices.Sorted(maps.Keys(s.udp)) }

// udpServer is one public UDP port: its socket and its flows by client.
type udpServer struct {
	e    *Edge
	port int
	pc   *net.UDPConn
	// addr is set for a port of an app's own anycast address
	// (anycast.go): its datagrams go to that address's app alone.
	addr netip.AddrPort

	mu    sync.Mutex
	flows map[netip.AddrPort]*udpFlow
	wg    sync.WaitGroup
	stop  chan struct{} // closed when the port closes: flows end
	done  chan struct{} // closed once serve and every flow returned
}

// udpFlow is one client address's datagrams to the port.
type udpFlow struct {
	client netip.AddrPort
	in     chan []byte  // from the client, for the machine
	last   atomic.Int64 // unix nanoseconds of the last datagram either way
	up     atomic.Int64 // bytes from the client
	down   atomic.Int64 // bytes to the client
}

func (f *udpFlow) touch() { f.last.Store(time.Now().UnixNano()) }

func (l *listeners) listenUDP(ctx context.Context, port int) (*udpServer, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(l.e.cfg.Addr, uint16(port))))
	if err != nil {
		return nil, err
	}
	return l.serveUDP(ctx, pc, port, netip.AddrPort{}), nil
}

func (l *listeners) serveUDP(ctx context.Context, pc *net.UDPConn, port int, addr netip.AddrPort) *udpServer {
	u := &udpServer{e: l.e, port: port, pc: pc, addr: addr, flows: map[netip.AddrPort]*udpFlow{}, stop: make(chan struct{}), done: make(chan struct{})}
	l.wg.Go(func() { u.serve(ctx) })
	return u
}

// host is the host name of the app that owns the port now ("" if none).
func (u *udpServer) host() string {
	s := u.e.table.Snapshot()
	if u.addr.IsValid() {
		return s.dedicatedUDP[u.addr]
	}
	return s.udp[u.port]
}

// serve reads the port's datagrams until its socket closes, handing each
// to its client's flow (a new one for a new client).
func (u *udpServer) serve(ctx context.Context) {
	defer close(u.done)
	defer u.wg.Wait()
	buf := make([]byte, 65535)
	for {
		n, from, err := u.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.e.log.Debug("udp read", "port", u.port, "err", err)
			continue
		}
		d := append([]byte(nil), buf[:n]...)
		u.mu.Lock()
		f := u.flows[from]
		if f == nil {
			f = &udpFlow{client: from, in: make(chan []byte, udpQueue)}
			f.touch()
			u.flows[from] = f
			u.wg.Go(func() { u.run(ctx, f) })
		}
		u.mu.Unlock()
		select {
		case f.in <- d:
		default:
			u.e.metrics.udpDropped.WithLabelValues(u.app(), "queue").Inc()
		}
	}
}

// app is the name of the app that owns the port now.
func (u *udpServer) app() string {
	if h := u.host(); h != "" {
		return u.e.appOf(dest{host: h})
	}
	return ""
}

// run carries one flow: it takes a slot on a machine (held while one
// starts, as a connection is), connects, and copies datagrams both ways
// until the flow is idle for udpIdle or the port closes.
func (u *udpServer) run(ctx context.Context, f *udpFlow) {
	start := time.Now()
	defer func() {
		u.mu.Lock()
		delete(u.flows, f.client)
		u.mu.Unlock()
	}()
	host := u.host()
	st := &tcpState{id: newRequestID(), port: u.port, host: host, app: u.e.appOf(dest{host: host})}
	mc, err := u.connect(ctx, st)
	defer st.release()
	if err != nil {
		dropped := len(f.in)
		reason, why := u.e.whyNoMachine(st, u.e.route(udpDest(host, u.port)), err)
		if host == "" {
			reason, why = rejectNoMachine, fmt.Sprintf("no app serves UDP port %d", u.port)
		}
		st.reason = reason
		u.e.metrics.udpFlows.WithLabelValues(st.app, reason).Inc()
		u.e.metrics.udpDropped.WithLabelValues(st.app, "no_machine").Add(float64(dropped))
		u.log(f, st, start, errors.New(why))
		if st.app != "" {
			u.e.appLogs.log(st.app, fmt.Sprintf("UDP datagrams from %s to port %d dropped: %s", f.client.Addr().Unmap(), u.port, why))
		}
		return
	}
	defer mc.Close()
	// The machine's answers go back to the client from the public port.
	answers := make(chan struct{})
	go func() {
		defer close(answers)
		buf := make([]byte, 65535)
		for {
			n, err := mc.Read(buf)
			if err != nil {
				return
			}
			f.touch()
			f.down.Add(int64(n))
			_, _ = u.pc.WriteToUDPAddrPort(buf[:n], f.client)
		}
	}()
	idle := time.NewTicker(udpIdle / 4)
	defer idle.Stop()
flow:
	for {
		select {
		case d := <-f.in:
			f.touch()
			f.up.Add(int64(len(d)))
			if _, err := mc.Write(d); err != nil {
				u.e.log.Debug("udp to machine", "app", st.app, "machine", st.backend.Target.MachineID, "err", err)
			}
		case <-idle.C:
			if time.Since(time.Unix(0, f.last.Load())) >= udpIdle {
				break flow
			}
		case <-answers: // the relay connection to the machine's host ended
			break flow
		case <-u.stop:
			break flow
		case <-ctx.Done():
			break flow
		}
	}
	mc.Close()
	<-answers
	u.e.metrics.udpFlows.WithLabelValues(st.app, "done").Inc()
	u.e.egress.add(st.app, f.down.Load()) // budget.go: metered when the flow ends
	u.log(f, st, start, nil)
}

// connect takes a slot on a machine of the port's app and opens a UDP
// socket (or a relay flow) to it (tcp.go's connect).
func (u *udpServer) connect(ctx context.Context, st *tcpState) (net.Conn, error) {
	if st.host == "" {
		return nil, errNoCandidate
	}
	return u.e.connect(ctx, "udp", udpDest(st.host, u.port), st)
}

// log writes the access log line of a flow.
func (u *udpServer) log(f *udpFlow, st *tcpState, start time.Time, err error) {
	var machine, region string
	if st.backend != nil {
		machine, region = st.backend.Target.MachineID, st.backend.Target.Region
	}
	attrs := []slog.Attr{
		slog.String("flow_id", st.id),
		slog.String("client", f.client.Addr().Unmap().String()),
		slog.String("port", strconv.Itoa(u.port)+"/udp"),
		slog.String("app", st.app),
		slog.String("machine", machine),
		slog.String("machine_region", region),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int64("bytes_in", f.up.Load()),
		slog.Int64("bytes_out", f.down.Load()),
	}
	if st.reason != "" {
		attrs = append(attrs, slog.String("reason", st.reason))
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	u.e.accessLog.LogAttrs(context.Background(), slog.LevelInfo, "udp flow", attrs...)
}

// close stops the port: no new datagrams; flows end.
func (u *udpServer) close() {
	close(u.stop)
	u.pc.Close()
	<-u.done
}
