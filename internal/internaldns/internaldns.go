// Package internaldns is the DNS server each host runs for its machines:
// it answers Fly's names under .internal from the platform's current view
// of machines, and forwards every other name to the host's resolvers.
// The agent imports it and points each machine's /etc/resolv.conf at it
// (runtime.Net.DNS).
//
// Names, case-insensitive:
//
//	<app>.internal                  AAAA of the app's started machines
//	<region>.<app>.internal         AAAA of those in region
//	<machine-id>.vm.<app>.internal  AAAA of one machine, started or not
//	regions.<app>.internal          TXT: regions with started machines
//	_apps.internal                  TXT: the app names
//
// A name under .internal with no such records is NOERROR with no answer
// (NODATA) when it exists, NXDOMAIN when not. A query from a machine, known
// by its IPv4 or 6PN source address, sees only its own organisation's apps
// (DESIGN.md invariant 4); any other source (the host itself) sees all.
package internaldns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// Machine is one machine as the server sees it.
type Machine struct {
	App, ID, Region, Org string
	Addr                 netip.Addr // its 6PN address, the one answered
	IPv4                 netip.Addr // its address on its host's bridge, to know it as a source; may be unset
	Started              bool
}

// Source gives the current view of machines. It is called for each query
// touching .internal, so it must be cheap: a copy of what the caller
// already holds in memory, never a read of the central store.
type Source interface {
	Machines() []Machine
}

// SourceFunc is a function as a Source.
type SourceFunc func() []Machine

// Machines calls f.
func (f SourceFunc) Machines() []Machine { return f() }

// Config configures a Server.
type Config struct {
	// Addr is host:port to listen on, UDP and TCP; port 0 picks one.
	Addr string
	// Source is the machines to answer from.
	Source Source
	// Upstream are host:port resolvers for names outside .internal,
	// tried in order; empty answers those REFUSED.
	Upstream []string
	// ForwardTimeout bounds each upstream's answer; 0 is 2 s.
	ForwardTimeout time.Duration
	// TTL of the answers under .internal; 0 is 5 s, short because
	// machines start and stop.
	TTL uint32
	// Log receives the server's messages; nil discards them.
	Log *slog.Logger
}

// Server is the DNS server. Run serves until its context ends.
type Server struct {
	cfg  Config
	log  *slog.Logger
	udp  *dns.Server
	tcp  *dns.Server
	addr string
}

const (
	defaultTTL            = 5
	defaultForwardTimeout = 2 * time.Second
)

// New binds cfg.Addr on UDP and TCP (the same port for both, also when
// cfg.Addr asks for port 0) and returns the server, ready to Run.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("internaldns: Config.Source is required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = defaultTTL
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = defaultForwardTimeout
	}
	for _, u := range cfg.Upstream {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return nil, fmt.Errorf("internaldns: upstream %q must be host:port, like 192.0.2.53:53: %w", u, err)
		}
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	pc, ln, err := listen(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("internaldns: %w", err)
	}
	s.addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: ln, Handler: s}
	return s, nil
}

// listen binds addr on UDP, then TCP on the port UDP got. With port 0
// another process may hold that TCP port; a few fresh ports are tried.
func listen(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen address %q must be host:port, like 172.30.1.1:53: %w", addr, err)
	}
	for range 10 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen on udp %s: %w", addr, err)
		}
		_, got, _ := net.SplitHostPort(pc.LocalAddr().String())
		ln, err := net.Listen("tcp", net.JoinHostPort(host, got))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" {
			return nil, nil, fmt.Errorf("listen on tcp %s: %w", addr, err)
		}
	}
	return nil, nil, fmt.Errorf("listen on %s: found no port free for both UDP and TCP", addr)
}

// Addr is the address the server listens on, host:port.
func (s *Server) Addr() string { return s.addr }

// Run serves until ctx is done, then stops and returns nil; it returns
// early with an error if serving fails. Call it once.
func (s *Server) Run(ctx context.Context) error {
	servers := []*dns.Server{s.udp, s.tcp}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { errc <- srv.ActivateAndServe() }()
		// Shutdown refuses a server that has not started yet, which
		// would leave it serving.
		select {
		case <-started:
		case err := <-errc:
			s.shutdown(servers)
			return fmt.Errorf("internaldns: serve: %w", err)
		}
	}
	s.log.Info("internal DNS listening", "addr", s.addr, "upstream", s.cfg.Upstream)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("internaldns: serve: %w", err)
	}
	s.shutdown(servers)
	return err
}

func (s *Server) shutdown(servers []*dns.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.ShutdownContext(ctx)
	}
	// A server that never started still holds its socket.
	s.udp.PacketConn.Close()
	s.tcp.Listener.Close()
}
