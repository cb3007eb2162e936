package anycast

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"
)

// Peer is one upstream router: perch agent --bgp-peer ADDR,ASN[,password].
type Peer struct {
	Addr     netip.Addr
	ASN      uint32
	Password string
}

// CheckASN refuses what no BGP speaker may use as its own or a peer's AS
// number: 0, AS_TRANS (23456), and the reserved 65535 and 4294967295.
func CheckASN(n uint64) error {
	switch {
	case n == 0 || n > 4294967295:
		return fmt.Errorf("%w: AS number %d is outside 1-4294967294; use your own (private: 64512-65534 or 4200000000-4294967294)", ErrInvalid, n)
	case n == 23456:
		return fmt.Errorf("%w: AS number 23456 is AS_TRANS (RFC 6793), reserved for 2-byte speakers; use your own", ErrInvalid)
	case n == 65535 || n == 4294967295:
		return fmt.Errorf("%w: AS number %d is reserved (RFC 7300); use your own", ErrInvalid, n)
	}
	return nil
}

// ParsePeer reads ADDR,ASN[,password].
func ParsePeer(s string) (Peer, error) {
	parts := strings.SplitN(s, ",", 3)
	if len(parts) < 2 {
		return Peer{}, fmt.Errorf("%w: --bgp-peer %q: write ADDR,ASN[,password], e.g. 203.0.113.1,64500", ErrInvalid, s)
	}
	addr, err := netip.ParseAddr(strings.TrimSpace(parts[0]))
	if err != nil {
		return Peer{}, fmt.Errorf("%w: --bgp-peer %q: %q is not an IP address", ErrInvalid, s, parts[0])
	}
	asn, err := strconv.ParseUint(strings.TrimSpace(parts[1]), 10, 64)
	if err != nil {
		return Peer{}, fmt.Errorf("%w: --bgp-peer %q: AS number %q is not a number", ErrInvalid, s, parts[1])
	}
	if err := CheckASN(asn); err != nil {
		return Peer{}, fmt.Errorf("--bgp-peer %q: %w", s, err)
	}
	p := Peer{Addr: addr.Unmap(), ASN: uint32(asn)}
	if len(parts) == 3 {
		p.Password = parts[2]
	}
	return p, nil
}

// SpeakerConfig configures a host's BGP speaker.
type SpeakerConfig struct {
	ASN      uint32
	RouterID netip.Addr // an IPv4 address naming this speaker
	Peers    []Peer
	// HoldTime is the session hold time in seconds (9 if 0; keepalives
	// every third of it); ConnectRetry how long between connection
	// attempts (2 s if 0).
	HoldTime     uint64
	ConnectRetry uint64
	// PeerPort is the peers' TCP port (179 if 0; tests use others).
	PeerPort uint32
	// BFD runs BFD (RFC 5880, single hop: UDP 3784) with every peer,
	// 100 ms intervals, multiplier 3: a silent peer is declared down
	// after 300 ms instead of the hold time. The peer must run BFD too.
	BFD bool
	Log *slog.Logger
}

// Speaker announces this host's anycast prefixes to its upstream routers
// (GoBGP in-process, not listening: it connects to its peers). A prefix
// is announced while it is wanted (SetAddrs) and the speaker is healthy
// (SetHealthy); everything is withdrawn while it is not. State is local:
// a host cut off from the control plane keeps announcing what it had.
type Speaker struct {
	cfg SpeakerConfig
	srv *server.BgpServer
	log *slog.Logger

	flaps prometheus.Counter // sessions that left established

	stopped   chan struct{} // closed by Close
	closeOnce sync.Once

	mu        sync.Mutex
	want      map[netip.Addr]bool
	healthy   bool
	announced map[netip.Addr]bool
}

// StartSpeaker starts GoBGP and adds the peers; sessions come up in the
// background (a peer that refuses is retried and logged by GoBGP).
func StartSpeaker(ctx context.Context, cfg SpeakerConfig) (*Speaker, error) {
	if err := CheckASN(uint64(cfg.ASN)); err != nil {
		return nil, fmt.Errorf("--bgp-asn: %w", err)
	}
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("%w: BGP router id %v is not an IPv4 address", ErrInvalid, cfg.RouterID)
	}
	if len(cfg.Peers) == 0 {
		return nil, fmt.Errorf("%w: no BGP peer: give --bgp-peer ADDR,ASN", ErrInvalid)
	}
	if cfg.HoldTime == 0 {
		cfg.HoldTime = 9
	}
	if cfg.ConnectRetry == 0 {
		cfg.ConnectRetry = 2
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	srv := server.NewBgpServer(server.LoggerOption(cfg.Log.With("component", "gobgp"), lvl))
	go srv.Serve()
	s := &Speaker{cfg: cfg, srv: srv, log: cfg.Log, stopped: make(chan struct{}), want: map[netip.Addr]bool{}, announced: map[netip.Addr]bool{}, healthy: true,
		flaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "perch_bgp_session_flaps_total", Help: "BGP sessions of this host that went down after being established."})}
	established := map[string]bool{}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: -1,
	}}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("bgp: start: %w", err)
	}
	for _, p := range cfg.Peers {
		afi := api.Family_AFI_IP
		if p.Addr.Is6() {
			afi = api.Family_AFI_IP6
		}
		peer := &api.Peer{
			Conf: &api.PeerConf{NeighborAddress: p.Addr.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
			Timers: &api.Timers{Config: &api.TimersConfig{
				HoldTime: cfg.HoldTime, KeepaliveInterval: max(cfg.HoldTime/3, 1), ConnectRetry: cfg.ConnectRetry,
				IdleHoldTimeAfterReset: 1,
			}},
			Transport: &api.Transport{RemotePort: cfg.PeerPort},
			Bfd:       bfdConfig(cfg.BFD),
			AfiSafis: []*api.AfiSafi{{Config: &api.AfiSafiConfig{
				Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true,
			}}},
		}
		if err := srv.AddPeer(ctx, &api.AddPeerRequest{Peer: peer}); err != nil {
			srv.Stop()
			return nil, fmt.Errorf("bgp: peer %s: %w", p.Addr, err)
		}
	}
	if err := srv.WatchEvent(context.Background(), server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if ev.Type != apiutil.PEER_EVENT_STATE {
				return
			}
			st := ev.Peer.State
			peer := st.NeighborAddress.String()
			up := st.SessionState == bgp.BGP_FSM_ESTABLISHED
			if established[peer] && !up {
				s.flaps.Inc()
			}
			established[peer] = up
			cfg.Log.Info("bgp: session", "peer", st.NeighborAddress, "asn", st.PeerASN, "state", st.SessionState.String(),
				"reason", st.DisconnectReason.String(), "message", st.DisconnectMessage)
		},
	}, server.WatchPeer()); err != nil {
		cfg.Log.Warn("bgp: no session events", "err", err)
	}
	go s.watchPeers(ctx, time.Duration(3*cfg.ConnectRetry)*time.Second)
	return s, nil
}

// watchPeers says in the log, once per outage, which peers have not been
// established for after: a peer that refuses, is unreachable or does
// not speak BGP (GoBGP itself says so only at debug level, or per
// malformed message). The host keeps serving and GoBGP keeps retrying.
func (s *Speaker) watchPeers(ctx context.Context, after time.Duration) {
	down := map[string]time.Time{}
	warned := map[string]bool{}
	t := time.NewTicker(after / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.stopped:
			return
		case <-t.C:
		}
		for _, ss := range s.Sessions(ctx) {
			if ss.State == "established" {
				if warned[ss.Peer] {
					s.log.Info("bgp: peer established again", "peer", ss.Peer, "asn", ss.ASN)
				}
				delete(down, ss.Peer)
				delete(warned, ss.Peer)
				continue
			}
			if down[ss.Peer].IsZero() {
				down[ss.Peer] = time.Now()
			}
			if !warned[ss.Peer] && time.Since(down[ss.Peer]) >= after {
				warned[ss.Peer] = true
				s.log.Warn("bgp: peer not established: it refuses, is unreachable or does not speak BGP; retrying, and this host keeps serving",
					"peer", ss.Peer, "asn", ss.ASN, "state", ss.State, "for", after)
			}
		}
	}
}

// bfdConfig is a peer's BFD: 100 ms (GoBGP counts microseconds), three
// missed packets declare the peer down.
func bfdConfig(on bool) *api.BfdPeerConfig {
	if !on {
		return nil
	}
	return &api.BfdPeerConfig{Enabled: true, DesiredMinimumTxInterval: 100_000, RequiredMinimumReceive: 100_000, DetectionMultiplier: 3}
}

// SetAddrs sets the addresses this host serves: each is announced as a
// /32 or /128 while the speaker is healthy.
func (s *Speaker) SetAddrs(addrs []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want = map[netip.Addr]bool{}
	for _, a := range addrs {
		s.want[a.Unmap()] = true
	}
	s.syncLocked()
}

// SetHealthy announces (true) or withdraws (false) every prefix: the
// edge's own health, a drained region, a stopping agent.
func (s *Speaker) SetHealthy(ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.healthy != ok {
		s.log.Info("bgp: announcements", "healthy", ok, "prefixes", len(s.want))
	}
	s.healthy = ok
	s.syncLocked()
}

// Announced lists the addresses announced now.
func (s *Speaker) Announced() []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Addr, 0, len(s.announced))
	for a := range s.announced {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

func (s *Speaker) syncLocked() {
	for a := range s.announced {
		if !s.healthy || !s.want[a] {
			if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{pathFor(a)}}); err != nil {
				s.log.Warn("bgp: withdraw", "prefix", Prefix(a), "err", err)
				continue
			}
			delete(s.announced, a)
			s.log.Info("bgp: withdrawn", "prefix", Prefix(a))
		}
	}
	if !s.healthy {
		return
	}
	for a := range s.want {
		if s.announced[a] {
			continue
		}
		if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{pathFor(a)}}); err != nil {
			s.log.Warn("bgp: announce", "prefix", Prefix(a), "err", err)
			continue
		}
		s.announced[a] = true
		s.log.Info("bgp: announced", "prefix", Prefix(a))
	}
}

// pathFor is a's host prefix with an unspecified next hop: GoBGP puts
// the session's own address there for each eBGP peer.
func pathFor(a netip.Addr) *apiutil.Path {
	nlri, _ := bgp.NewIPAddrPrefix(Prefix(a))
	origin := bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)
	if a.Is4() {
		nh, _ := bgp.NewPathAttributeNextHop(netip.IPv4Unspecified())
		return &apiutil.Path{Family: bgp.RF_IPv4_UC, Nlri: nlri, Attrs: []bgp.PathAttributeInterface{origin, nh}}
	}
	mp, _ := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
	return &apiutil.Path{Family: bgp.RF_IPv6_UC, Nlri: nlri, Attrs: []bgp.PathAttributeInterface{origin, mp}}
}

// Session is one peer's BGP session as perch hosts shows it.
type Session struct {
	Peer  string `json:"peer"`
	ASN   uint32 `json:"asn"`
	State string `json:"state"` // established, active, connect, idle ...
}

// Sessions reports each peer's session state.
func (s *Speaker) Sessions(ctx context.Context) []Session {
	var out []Session
	_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		st := "unknown"
		if p.State != nil {
			st = strings.ToLower(strings.TrimPrefix(p.State.SessionState.String(), "SESSION_STATE_"))
		}
		out = append(out, Session{Peer: p.GetConf().GetNeighborAddress(), ASN: p.GetConf().GetPeerAsn(), State: st})
	})
	slices.SortFunc(out, func(a, b Session) int { return strings.Compare(a.Peer, b.Peer) })
	return out
}

// Close withdraws everything (a NOTIFICATION Cease to each peer as GoBGP
// stops) and stops the speaker.
// GoBGP's stop waits for every peer's session goroutines without a
// bound (its context is unused); a session stuck with a peer must not
// keep the host from stopping, so Close gives up after stopWait and the
// process's exit closes what is left (the peers see the TCP session end).
func (s *Speaker) Close() {
	s.closeOnce.Do(func() { close(s.stopped) })
	s.SetHealthy(false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		s.srv.Stop()
	}()
	select {
	case <-done:
	case <-time.After(stopWait):
		s.log.Warn("bgp: the speaker did not stop in time; leaving its sessions to end with the process", "waited", stopWait)
	}
}

// stopWait bounds Close.
const stopWait = 5 * time.Second

// Collectors are the speaker's Prometheus metrics: sessions established,
// prefixes announced, session flaps.
func (s *Speaker) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		s.flaps,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "perch_bgp_prefixes_announced", Help: "Anycast prefixes this host announces now."},
			func() float64 { return float64(len(s.Announced())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "perch_bgp_sessions_established", Help: "BGP sessions of this host that are established."},
			func() float64 {
				n := 0
				for _, ss := range s.Sessions(context.Background()) {
					if ss.State == "established" {
						n++
					}
				}
				return float64(n)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "perch_bgp_sessions", Help: "BGP peers configured on this host."},
			func() float64 { return float64(len(s.cfg.Peers)) }),
	}
}
