package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
)

// Flow handoff on a host (anycast.Handoff, docs/anycast.md): this host
// hands TCP packets of connections it does not own, arriving on its
// anycast addresses, to the hosts that are draining (they own them:
// their clients' routers moved mid-connection). Which hosts drain, it
// learns two ways: from the control plane (a drained region's record in
// perch_ips: its hosts) and from the draining host itself, over the mesh
// (HandoffMeshPort: a SIGTERM'd agent, or a drained region's host, says
// so to every peer before it withdraws, and again until it is done), so
// a host cut off from the control plane still hands flows to its
// neighbours and they to it. A host that starts announcing again hands
// unknown flows to every host for handoffBack, the connections the
// others took meanwhile.

// HandoffMeshPort is the TCP port on every host's mesh address where it
// hears "PERCH-HANDOFF1 drain <seconds>\n" (the sender drains for up to
// that long) and "PERCH-HANDOFF1 done\n", and answers "OK\n".
const HandoffMeshPort = 4282

const handoffMagic = "PERCH-HANDOFF1 "

// handoffBack is how long a host hands unknown flows to every other
// host once it announces again, and once another host starts or stops
// draining: while the routers converge, a connection may move between
// two hosts that both keep announcing (a router picks another of its
// equal paths), and only its owner knows it.
const handoffBack = 10 * time.Second

// handoffRefresh is how often a draining host says so again; its word
// lasts handoffTTL unless it says done.
const (
	handoffRefresh = 5 * time.Second
	handoffTTL     = 15 * time.Second
)

type handoffHost struct {
	a   *Agent
	ho  *anycast.Handoff
	log *slog.Logger

	mu       sync.Mutex
	drained  map[string]bool          // regions, from perch_ips
	draining map[netip.Addr]time.Time // hosts' addresses -> until, from the mesh
	back     time.Time                // hand unknown flows to every host until then
	applied  string                   // the last state applied, to skip repeats
	kick     chan struct{}
	syncMu   sync.Mutex // one sync at a time
}

// tunnelAddr is the address other hosts reach h at: its mesh endpoint's.
func tunnelAddr(h api.Host) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(h.MeshEndpoint); err == nil {
		return ap.Addr().Unmap(), true
	}
	if a, err := netip.ParseAddr(h.Address); err == nil {
		return a.Unmap(), true
	}
	return netip.Addr{}, false
}

// startHandoff makes the host's handoff side; nil (and logged) when it
// cannot: the host still serves, only moved connections are reset.
func (a *Agent) startHandoff() *handoffHost {
	log := a.log.With("component", "handoff")
	ep := a.meshEndpoint()
	var local netip.Addr
	if ap, err := netip.ParseAddrPort(ep); err == nil {
		local = ap.Addr().Unmap()
	} else if ad, err := netip.ParseAddr(a.cfg.Address); err == nil {
		local = ad.Unmap()
	}
	h := &handoffHost{a: a, ho: &anycast.Handoff{Local: local}, log: log,
		drained: map[string]bool{}, draining: map[netip.Addr]time.Time{}, kick: make(chan struct{}, 1)}
	if err := h.ho.Ensure(); err != nil {
		log.Error("flow handoff is off on this host: connections moved to or from it by a route change are reset", "err", err)
		return nil
	}
	return h
}

func (h *handoffHost) poke() {
	if h == nil {
		return
	}
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// setDrained records the drained regions (perch_ips).
func (h *handoffHost) setDrained(regions map[string]bool) {
	if h == nil {
		return
	}
	h.mu.Lock()
	if !maps.Equal(h.drained, regions) {
		h.back = time.Now().Add(handoffBack)
	}
	h.drained = regions
	h.mu.Unlock()
	h.poke()
}

// announcing is told that this host announces again: it hands unknown
// flows to every host for a while.
func (h *handoffHost) announcing() {
	if h == nil {
		return
	}
	h.mu.Lock()
	h.back = time.Now().Add(handoffBack)
	h.mu.Unlock()
	h.sync()
}

// run applies the state on every change and every second (for words
// from the mesh that run out), and serves the mesh port, until ctx is
// done; then it removes the device and the rules.
func (h *handoffHost) run(ctx context.Context) {
	if h == nil {
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { h.serve(ctx) })
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		h.sync()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-h.kick:
		}
	}
}

// sync applies what the host knows now, if it changed.
func (h *handoffHost) sync() {
	h.syncMu.Lock()
	defer h.syncMu.Unlock()
	hosts := h.a.mesh.Hosts()
	var all, targets []netip.Addr
	self, _ := tunnelAddr(hosts[h.a.host.ID])
	now := time.Now()
	h.mu.Lock()
	for ad, until := range h.draining {
		if now.After(until) {
			delete(h.draining, ad)
			h.log.Info("a host's word that it drains ran out", "host_addr", ad)
		}
	}
	for id, hr := range hosts {
		ad, ok := tunnelAddr(hr)
		if !ok || id == h.a.host.ID || hr.Role == api.HostRoleControl || ad == self {
			continue
		}
		all = append(all, ad)
		if h.drained[hr.Region] || now.Before(h.back) {
			targets = append(targets, ad)
		}
	}
	for ad := range h.draining {
		targets = append(targets, ad)
		if !slices.Contains(all, ad) {
			all = append(all, ad)
		}
	}
	h.mu.Unlock()
	addrs := h.a.anycast.Addrs()
	slices.SortFunc(all, netip.Addr.Compare)
	slices.SortFunc(targets, netip.Addr.Compare)
	targets = slices.Compact(targets)
	state := fmt.Sprint(addrs, all, targets)
	h.mu.Lock()
	same := state == h.applied
	h.mu.Unlock()
	if same {
		return
	}
	if err := h.ho.Set(addrs, all, targets); err != nil {
		h.log.Error("flow handoff rules not applied", "err", err)
		return
	}
	h.mu.Lock()
	h.applied = state
	h.mu.Unlock()
	h.log.Info("flow handoff", "to", targets, "anycast", len(addrs), "hosts", len(all))
}

// serve answers the mesh port: a peer's word that it drains, or is done.
func (h *handoffHost) serve(ctx context.Context) {
	ln, err := h.a.mesh.Node().Listen(HandoffMeshPort)
	if err != nil {
		h.log.Error("no handoff word from other hosts over the mesh", "err", err)
		return
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go h.serveConn(c)
	}
}

func (h *handoffHost) serveConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(c, 128)).ReadString('\n')
	if err != nil {
		return
	}
	rest, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(handoffMagic))
	if !ok {
		_, _ = io.WriteString(c, "ERR not a handoff word\n")
		return
	}
	// The sender is the mesh peer at the connection's address
	// (WireGuard authenticated it): its handoff address is its record's.
	from, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	var peer api.Host
	found := false
	for _, hr := range h.a.mesh.Hosts() {
		if ma, err := netip.ParseAddr(hr.MeshAddr); err == nil && ma == from.Addr().Unmap() {
			peer, found = hr, true
		}
	}
	ad, ok := tunnelAddr(peer)
	if !found || !ok {
		_, _ = io.WriteString(c, "ERR unknown host\n")
		return
	}
	f := strings.Fields(rest)
	switch {
	case len(f) == 2 && f[0] == "drain":
		secs, err := strconv.Atoi(f[1])
		if err != nil || secs <= 0 || secs > 3600 {
			_, _ = io.WriteString(c, "ERR want drain SECONDS (1-3600)\n")
			return
		}
		h.mu.Lock()
		_, had := h.draining[ad]
		h.draining[ad] = time.Now().Add(time.Duration(secs) * time.Second)
		if !had {
			h.back = time.Now().Add(handoffBack)
		}
		h.mu.Unlock()
		if !had {
			h.log.Info("a host drains: handing it its connections", "host", peer.ID, "region", peer.Region, "for", time.Duration(secs)*time.Second)
		}
	case len(f) == 1 && f[0] == "done":
		h.mu.Lock()
		if _, had := h.draining[ad]; had {
			h.back = time.Now().Add(handoffBack)
		}
		delete(h.draining, ad)
		h.mu.Unlock()
		h.log.Info("a host is done draining", "host", peer.ID, "region", peer.Region)
	default:
		_, _ = io.WriteString(c, "ERR want drain SECONDS or done\n")
		return
	}
	h.sync() // applied before the answer: the sender withdraws next
	_, _ = io.WriteString(c, "OK\n")
}

// tell says word ("drain N" or "done") to every peer host over the
// mesh, at once, waiting up to a second for their answers; it returns
// how many answered OK.
func (h *handoffHost) tell(ctx context.Context, word string) int {
	if h == nil {
		return 0
	}
	var mu sync.Mutex
	n := 0
	var wg sync.WaitGroup
	for id, hr := range h.a.mesh.Hosts() {
		ma, err := netip.ParseAddr(hr.MeshAddr)
		if err != nil || id == h.a.host.ID || hr.Role == api.HostRoleControl {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := h.a.mesh.Node().DialContext(ctx, "tcp", netip.AddrPortFrom(ma, HandoffMeshPort).String())
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			if _, err := io.WriteString(c, handoffMagic+word+"\n"); err != nil {
				return
			}
			b, _ := bufio.NewReader(c).ReadString('\n')
			if b == "OK\n" {
				mu.Lock()
				n++
				mu.Unlock()
			} else {
				h.log.Warn("a host did not take this host's handoff word", "host", id, "word", word, "answer", strings.TrimSpace(b))
			}
		})
	}
	wg.Wait()
	return n
}

// close removes the device and the rules.
func (h *handoffHost) close() {
	if h != nil {
		h.ho.Close()
	}
}

// anycastConns counts this host's TCP connections on addrs that are not
// over (neither listening nor in TIME_WAIT or CLOSE), from
// /proc/net/tcp and tcp6.
func anycastConns(addrs []netip.Addr) int { return anycastConnsOnPort(addrs, 0) }

// anycastConnsOnPort is anycastConns counting only local port port (any
// if 0).
func anycastConnsOnPort(addrs []netip.Addr, port int) int {
	set := map[netip.Addr]bool{}
	for _, a := range addrs {
		set[a.Unmap()] = true
	}
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for line := range bytes.Lines(b) {
			fs := strings.Fields(string(line))
			if len(fs) < 4 || fs[0] == "sl" {
				continue
			}
			switch fs[3] {
			case "06", "07", "0A": // TIME_WAIT, CLOSE, LISTEN
				continue
			}
			hexAddr, hexPort, ok := strings.Cut(fs[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(hexPort, 16, 16); port != 0 && (err != nil || int(p) != port) {
				continue
			}
			if a, ok := procAddr(hexAddr); ok && set[a.Unmap()] {
				n++
			}
		}
	}
	return n
}

// procAddr reads /proc/net/tcp's address: 32-bit words in host (little
// endian) order.
func procAddr(s string) (netip.Addr, bool) {
	if len(s) != 8 && len(s) != 32 {
		return netip.Addr{}, false
	}
	raw := make([]byte, len(s)/2)
	for i := range raw {
		v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
		if err != nil {
			return netip.Addr{}, false
		}
		raw[i] = byte(v)
	}
	for w := 0; w+4 <= len(raw); w += 4 {
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	a, ok := netip.AddrFromSlice(raw)
	return a, ok
}
