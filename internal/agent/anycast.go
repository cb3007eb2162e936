package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/anycast"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Anycast on a host (docs/anycast.md): the addresses allocated in
// perch_ips go on a dummy device, and with --bgp-asn the host's BGP
// speaker announces them while the edge is healthy. What is announced
// comes from this process's memory of the last content of perch_ips: a
// host cut off from the control plane keeps announcing what it serves.

// AnycastConfig configures a host's anycast side.
type AnycastConfig struct {
	// ASN and Peers: perch agent --bgp-asn, --bgp-peer. No ASN: no BGP
	// (addresses still go on the device).
	ASN   uint32
	Peers []anycast.Peer
	// BFD runs BFD with every peer (perch agent --bgp-bfd).
	BFD bool
	// Device is the dummy device the addresses go on (perch-anycast).
	Device string
	// WithdrawWait is how long a stopping agent keeps serving after it
	// withdrew its routes, before it drains (2 s if 0).
	WithdrawWait time.Duration
}

type anycastHost struct {
	cfg AnycastConfig
	log *slog.Logger
	dev *anycast.LinkDevice
	sp  *anycast.Speaker

	mu    sync.Mutex
	addrs map[string]netip.Addr // perch_ips key -> address

	// healthMu orders the health watcher's announcements with a stop's
	// withdrawal: once stopping, nothing announces again.
	healthMu sync.Mutex
	stopping bool
}

// setHealthy announces (ok) or withdraws, unless the agent is stopping.
func (h *anycastHost) setHealthy(ok bool) {
	h.healthMu.Lock()
	defer h.healthMu.Unlock()
	if !h.stopping {
		h.sp.SetHealthy(ok)
	}
}

// startAnycast makes the host's anycast side; nil when the host has none
// (no BGP and no device wanted). A BGP speaker that cannot start is
// logged and left out: the host keeps serving.
func (a *Agent) startAnycast(ctx context.Context) *anycastHost {
	c := a.cfg.Anycast
	if c.Device == "" {
		c.Device = anycast.DefaultDevice
	}
	if c.WithdrawWait == 0 {
		c.WithdrawWait = 2 * time.Second
	}
	h := &anycastHost{cfg: c, log: a.log.With("component", "anycast"), dev: &anycast.LinkDevice{Name: c.Device}, addrs: map[string]netip.Addr{}}
	if c.ASN != 0 || len(c.Peers) > 0 {
		rid := a.cfg.EdgeAddr
		if !rid.Is4() || rid.IsLoopback() {
			if addr, err := netip.ParseAddr(a.cfg.Address); err == nil && addr.Is4() {
				rid = addr
			}
		}
		sp, err := anycast.StartSpeaker(ctx, anycast.SpeakerConfig{ASN: c.ASN, RouterID: rid, Peers: c.Peers, BFD: c.BFD, Log: h.log})
		if err != nil {
			h.log.Error("BGP is off on this host: nothing is announced from it; fix the flags and restart the agent", "err", err)
		} else {
			h.sp = sp
			sp.SetHealthy(false) // until the edge has its table and answers
		}
	}
	return h
}

// run follows perch_ips into the device and the speaker, and the edge's
// health into the announcements, until ctx is done.
func (h *anycastHost) run(ctx context.Context, a *Agent) {
	var wg sync.WaitGroup
	wg.Go(func() { h.watchHealth(ctx, a) })
	a.st.Watch(ctx, a.st.IPs, h.log, func(c store.Change) {
		h.mu.Lock()
		if c.All != nil {
			h.addrs = map[string]netip.Addr{}
			for k, v := range c.All {
				if ip, ok := decodeIP(v); ok {
					h.addrs[k] = ip
				}
			}
		} else if c.Deleted {
			delete(h.addrs, c.Key)
		} else if ip, ok := decodeIP(c.Value); ok {
			h.addrs[c.Key] = ip
		}
		addrs := h.listLocked()
		h.mu.Unlock()
		h.apply(addrs)
	})
	wg.Wait()
}

func decodeIP(v []byte) (netip.Addr, bool) {
	var as anycast.Assignment
	if json.Unmarshal(v, &as) != nil || !as.IP.IsValid() {
		return netip.Addr{}, false
	}
	return as.IP, true
}

func (h *anycastHost) listLocked() []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, ip := range h.addrs {
		if !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Addrs is the addresses this host serves.
func (h *anycastHost) Addrs() []netip.Addr {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.listLocked()
}

func (h *anycastHost) apply(addrs []netip.Addr) {
	if len(addrs) > 0 {
		if err := h.dev.Ensure(); err != nil {
			h.log.Error("anycast addresses not on the host", "err", err)
		} else if err := h.dev.SetAddrs(addrs); err != nil {
			h.log.Error("anycast addresses not on the host", "err", err)
		}
	}
	if h.sp != nil {
		h.sp.SetAddrs(addrs)
	}
}

// watchHealth announces while the edge is healthy: its table built, and
// every TCP port it listens on accepting, on the edge's address and on
// the apps' own addresses. Three
// failed probes in a row withdraw; one good one announces again.
func (h *anycastHost) watchHealth(ctx context.Context, a *Agent) {
	if h.sp == nil {
		return
	}
	select {
	case <-a.edge.Ready():
	case <-ctx.Done():
		return
	}
	fails := 0
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if err := h.probe(ctx, a); err != nil {
			fails++
			if fails == 3 {
				h.log.Warn("the edge fails its own check: withdrawing this host's routes", "err", err)
				h.setHealthy(false)
			}
		} else {
			if fails >= 3 {
				h.log.Info("the edge answers again: announcing")
			}
			fails = 0
			h.setHealthy(true)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (h *anycastHost) probe(ctx context.Context, a *Agent) error {
	targets := []string{}
	for _, p := range a.edge.Listening() {
		targets = append(targets, net.JoinHostPort(a.cfg.EdgeAddr.String(), strconv.Itoa(p)))
	}
	for _, ap := range a.edge.ListeningDedicated() {
		targets = append(targets, ap.String())
	}
	for _, t := range targets {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", t)
		if err != nil {
			return err
		}
		c.Close()
	}
	return nil
}

// withdraw takes every route back before the host stops serving, and
// waits for the routers to move traffic away (WithdrawWait).
func (h *anycastHost) withdraw() {
	if h == nil || h.sp == nil {
		return
	}
	h.log.Info("stopping: withdrawing this host's routes before draining", "wait", h.cfg.WithdrawWait)
	h.healthMu.Lock()
	h.stopping = true // the health watcher must not announce again
	h.sp.SetHealthy(false)
	h.healthMu.Unlock()
	time.Sleep(h.cfg.WithdrawWait)
}

func (h *anycastHost) close() {
	if h != nil && h.sp != nil {
		h.sp.Close()
	}
}

// report is the speaker's state for the heartbeat (perch hosts, perch
// ips list); nil without BGP.
func (h *anycastHost) report(ctx context.Context) *api.HostBGP {
	if h == nil || h.sp == nil {
		return nil
	}
	r := &api.HostBGP{Sessions: []api.BGPSession{}, Announced: []string{}}
	for _, s := range h.sp.Sessions(ctx) {
		r.Sessions = append(r.Sessions, api.BGPSession{Peer: s.Peer, ASN: s.ASN, State: s.State})
	}
	for _, a := range h.sp.Announced() {
		r.Announced = append(r.Announced, a.String())
	}
	return r
}
