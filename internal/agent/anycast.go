package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
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
	// DrainTimeout bounds how long a stopping agent then waits for the
	// connections on its anycast addresses to finish (30 s if 0).
	DrainTimeout time.Duration
}

type anycastHost struct {
	cfg    AnycastConfig
	region string
	log    *slog.Logger
	dev    *anycast.LinkDevice
	sp     *anycast.Speaker

	// ho hands connections this host does not own to the hosts that
	// drain (handoff.go); nil without BGP or when it cannot.
	ho *handoffHost

	mu      sync.Mutex
	addrs   map[string]netip.Addr // perch_ips key -> address
	drained map[string]bool       // regions drained (perch_ips drain.<region>)

	// healthMu orders the health watcher's announcements with a stop's
	// withdrawal and a region drain: once stopping, nothing announces
	// again; while drained, neither.
	healthMu  sync.Mutex
	stopping  bool
	healthy   bool // the edge's own check
	drainedMe bool // this host's region is drained (and the peers were told)
	announced bool // what was last applied
}

// setHealthy records the edge's health and announces or withdraws.
func (h *anycastHost) setHealthy(ok bool) {
	h.healthMu.Lock()
	defer h.healthMu.Unlock()
	h.healthy = ok
	h.applyLocked()
}

// applyLocked announces while the edge is healthy, the region not
// drained and the agent not stopping; healthMu is held. A host that
// announces again first hands unknown flows to every host for a while:
// the connections they took while it did not announce.
func (h *anycastHost) applyLocked() {
	if h.stopping {
		return
	}
	// A host of a drained region never starts announcing; one that
	// announces withdraws once runDrain has told the other hosts.
	on := h.healthy && !h.drainedMe && (h.announced || !h.regionDrained(h.region))
	if on && !h.announced {
		h.ho.announcing()
	}
	h.announced = on
	h.sp.SetHealthy(on)
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
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 30 * time.Second
	}
	h := &anycastHost{cfg: c, region: a.cfg.Region, log: a.log.With("component", "anycast"), dev: &anycast.LinkDevice{Name: c.Device}, addrs: map[string]netip.Addr{}}
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
			sp.SetHealthy(false)    // until the edge has its table and answers
			h.ho = a.startHandoff() // handoff.go
		}
	}
	return h
}

// run follows perch_ips into the device and the speaker, and the edge's
// health into the announcements, until ctx is done.
func (h *anycastHost) run(ctx context.Context, a *Agent) {
	var wg sync.WaitGroup
	wg.Go(func() { h.watchHealth(ctx, a) })
	if h.ho != nil {
		wg.Go(func() { h.ho.run(ctx) })
		wg.Go(func() { h.runDrain(ctx, a.cfg.Region) })
	}
	h.drained = map[string]bool{}
	a.st.Watch(ctx, a.st.IPs, h.log, func(c store.Change) {
		h.mu.Lock()
		if c.All != nil {
			h.addrs = map[string]netip.Addr{}
			h.drained = map[string]bool{}
			for k, v := range c.All {
				if r, ok := anycast.DrainedRegion(k); ok {
					h.drained[r] = true
				} else if ip, ok := decodeIP(v); ok {
					h.addrs[k] = ip
				}
			}
		} else if r, ok := anycast.DrainedRegion(c.Key); ok {
			h.drained = maps.Clone(h.drained)
			if c.Deleted {
				delete(h.drained, r)
			} else {
				h.drained[r] = true
			}
		} else if c.Deleted {
			delete(h.addrs, c.Key)
		} else if ip, ok := decodeIP(c.Value); ok {
			h.addrs[c.Key] = ip
		}
		addrs, drained := h.listLocked(), h.drained
		h.mu.Unlock()
		h.apply(addrs)
		h.ho.setDrained(drained)
	})
	wg.Wait()
}

// regionDrained says whether perch regions drain took region's routes.
func (h *anycastHost) regionDrained(region string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.drained[region]
}

// runDrain follows this host's region's drain: drained, it tells every
// peer over the mesh that it drains (again every handoffRefresh, so its
// word outlives a peer's restart and needs no control plane), then
// withdraws; undrained, it says it is done and announces again.
func (h *anycastHost) runDrain(ctx context.Context, region string) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var told time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		want := h.regionDrained(region)
		h.healthMu.Lock()
		have, stopping := h.drainedMe, h.stopping
		h.healthMu.Unlock()
		if stopping {
			return
		}
		switch {
		case want && (!have || time.Since(told) >= handoffRefresh):
			n := h.ho.tell(ctx, fmt.Sprintf("drain %d", int(handoffTTL/time.Second)))
			told = time.Now()
			if !have {
				h.log.Info("region drained: told the other hosts, withdrawing this host's routes and serving what still arrives", "told", n)
				h.healthMu.Lock()
				h.drainedMe = true
				h.applyLocked()
				h.healthMu.Unlock()
			}
		case !want && have:
			n := h.ho.tell(ctx, "done")
			h.log.Info("region undrained: announcing this host's routes again", "told", n)
			h.healthMu.Lock()
			h.drainedMe = false
			h.applyLocked()
			h.healthMu.Unlock()
		}
	}
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
	h.ho.poke()
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

// withdraw takes every route back before the host stops serving: it
// first tells every peer over the mesh that it drains (they hand it the
// packets of its connections that the routers send them now), withdraws,
// keeps serving while the routers move traffic away (WithdrawWait), then
// waits for the connections on its anycast addresses to finish, up to
// DrainTimeout.
func (h *anycastHost) withdraw(ctx context.Context) {
	if h == nil || h.sp == nil {
		return
	}
	word := fmt.Sprintf("drain %d", int((h.cfg.WithdrawWait+h.cfg.DrainTimeout+handoffTTL)/time.Second))
	told := h.ho.tell(ctx, word)
	// Said again while this host drains: a peer that did not answer in
	// time (or restarted) hears it then.
	refresh, stopRefresh := context.WithCancel(ctx)
	defer stopRefresh()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-refresh.Done():
				return
			case <-t.C:
				h.ho.tell(refresh, word)
			}
		}
	}()
	h.log.Info("stopping: told the other hosts, withdrawing this host's routes before draining", "told", told, "wait", h.cfg.WithdrawWait, "drain_timeout", h.cfg.DrainTimeout)
	h.healthMu.Lock()
	h.stopping = true // the health watcher must not announce again
	h.sp.SetHealthy(false)
	h.healthMu.Unlock()
	time.Sleep(h.cfg.WithdrawWait)
	start := time.Now()
	addrs := h.Addrs()
	n := anycastConns(addrs)
	for n > 0 && time.Since(start) < h.cfg.DrainTimeout {
		time.Sleep(100 * time.Millisecond)
		n = anycastConns(addrs)
	}
	if n > 0 {
		h.log.Warn("drain timeout: stopping with connections still open on the anycast addresses", "connections", n, "drain_timeout", h.cfg.DrainTimeout)
	} else {
		h.log.Info("drained: no connection left on the anycast addresses", "waited", time.Since(start).Round(time.Millisecond))
	}
}

func (h *anycastHost) close() {
	if h != nil && h.sp != nil {
		h.sp.Close()
		if h.ho != nil {
			// The connections are over: the other hosts may stop
			// handing this host flows.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			h.ho.tell(ctx, "done")
			cancel()
			h.ho.close()
		}
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
