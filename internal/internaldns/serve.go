package internaldns

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/miekg/dns"
)

// ServeDNS answers one query: names under .internal from the view, the
// rest through the upstream resolvers.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	var resp *dns.Msg
	switch {
	case req.Opcode != dns.OpcodeQuery:
		resp = new(dns.Msg).SetRcode(req, dns.RcodeNotImplemented)
	case len(req.Question) != 1:
		resp = new(dns.Msg).SetRcode(req, dns.RcodeFormatError)
	default:
		src, udp := source(w.RemoteAddr())
		if n := parseName(req.Question[0].Name); n.kind != kindNone {
			resp = s.answer(req, n, src)
		} else {
			network := "tcp"
			if udp {
				network = "udp"
			}
			resp = s.forward(req, network)
		}
		if udp {
			// Over UDP an answer must fit the client's buffer; a
			// truncated one tells it to ask again over TCP.
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = max(size, int(opt.UDPSize()))
			}
			resp.Truncate(size)
		}
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("write DNS answer", "to", w.RemoteAddr(), "err", err)
	}
}

// source is the address a query came from and whether over UDP.
func source(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr(), true
	case *net.TCPAddr:
		return a.AddrPort().Addr(), false
	}
	return netip.Addr{}, false
}

// forward asks the upstream resolvers in order and passes on the first
// answer, whatever its code; SERVFAIL when none answers in time, REFUSED
// when there are none.
func (s *Server) forward(req *dns.Msg, network string) *dns.Msg {
	if len(s.cfg.Upstream) == 0 {
		return new(dns.Msg).SetRcode(req, dns.RcodeRefused)
	}
	// The buffer takes whatever an upstream sends, also one that does not
	// truncate for a small client; ServeDNS truncates for ours.
	c := &dns.Client{Net: network, Timeout: s.cfg.ForwardTimeout, UDPSize: dns.MaxMsgSize}
	for _, up := range s.cfg.Upstream {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ForwardTimeout)
		resp, _, err := c.ExchangeContext(ctx, req.Copy(), up)
		cancel()
		if err == nil && resp != nil {
			resp.Id = req.Id
			return resp
		}
		s.log.Debug("upstream resolver failed", "upstream", up, "name", req.Question[0].Name, "err", err)
	}
	s.log.Warn("no upstream resolver answered", "name", req.Question[0].Name, "upstream", s.cfg.Upstream)
	return new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
}

// UpstreamsFromResolvConf lists the nameservers of a resolv.conf (the
// host's /etc/resolv.conf) as Config.Upstream.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	cc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("internaldns: read nameservers: %w", err)
	}
	ups := make([]string, 0, len(cc.Servers))
	for _, a := range cc.Servers {
		ups = append(ups, net.JoinHostPort(a, cc.Port))
	}
	return ups, nil
}
