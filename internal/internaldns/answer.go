package internaldns

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// view is the machines one query may see, by lower-case app name.
type view map[string][]Machine

// view returns the machines a query from src sees: those of src's
// organisation when src is a known machine, all of them otherwise. A
// source claimed by machines of two organisations (a stale view) sees
// none rather than the wrong one's.
func (s *Server) view(src netip.Addr) view {
	all := s.cfg.Source.Machines()
	src = src.Unmap().WithZone("")
	var orgs []string
	for _, m := range all {
		if src.IsValid() && (m.Addr == src || m.IPv4 == src) && !slices.Contains(orgs, m.Org) {
			orgs = append(orgs, m.Org)
		}
	}
	if len(orgs) > 1 {
		s.log.Warn("a query's source address belongs to machines of several organisations; answering nothing under .internal", "src", src, "orgs", orgs)
		return view{}
	}
	v := view{}
	for _, m := range all {
		if len(orgs) == 1 && m.Org != orgs[0] {
			continue
		}
		app := strings.ToLower(m.App)
		v[app] = append(v[app], m)
	}
	return v
}

// answer is the reply to a query for a name under .internal.
func (s *Server) answer(req *dns.Msg, n name, src netip.Addr) *dns.Msg {
	q := req.Question[0]
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = len(s.cfg.Upstream) > 0
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return m
	}
	rrs, exists := s.records(n, s.view(src))
	if !exists {
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa()}
		return m
	}
	for _, rr := range rrs {
		h := rr.Header()
		if q.Qtype == h.Rrtype || q.Qtype == dns.TypeANY {
			// The name as asked: resolvers may vary its case (0x20) and
			// check it comes back the same.
			h.Name = q.Name
			m.Answer = append(m.Answer, rr)
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{s.soa()}
	}
	return m
}

// records are all the records of n in v, and whether n exists at all.
func (s *Server) records(n name, v view) (rrs []dns.RR, exists bool) {
	switch n.kind {
	case kindApex:
		return []dns.RR{s.soa()}, true
	case kindApps:
		apps := make([]string, 0, len(v))
		for app := range v {
			apps = append(apps, app)
		}
		return s.txt(apps), true
	case kindApp, kindRegion, kindRegions, kindMachine:
	default:
		return nil, false
	}
	ms, ok := v[n.app]
	if !ok {
		return nil, false
	}
	var addrs []netip.Addr
	var regions []string
	exists = n.kind != kindRegion && n.kind != kindMachine
	for _, m := range ms {
		switch n.kind {
		case kindApp:
			if m.Started {
				addrs = append(addrs, m.Addr)
			}
		case kindRegion:
			if strings.EqualFold(m.Region, n.region) {
				exists = true
				if m.Started {
					addrs = append(addrs, m.Addr)
				}
			}
		case kindRegions:
			if m.Started {
				regions = append(regions, strings.ToLower(m.Region))
			}
		case kindMachine:
			if strings.EqualFold(m.ID, n.id) {
				exists = true
				addrs = append(addrs, m.Addr)
			}
		}
	}
	if n.kind == kindRegions {
		return s.txt(regions), true
	}
	return s.aaaa(addrs), exists
}

// aaaa makes AAAA records of the valid IPv6 addresses, sorted.
func (s *Server) aaaa(addrs []netip.Addr) []dns.RR {
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	var rrs []dns.RR
	for _, a := range addrs {
		if !a.Is6() || a.Is4In6() {
			continue
		}
		rrs = append(rrs, &dns.AAAA{Hdr: s.hdr(dns.TypeAAAA), AAAA: a.AsSlice()})
	}
	return rrs
}

// txt makes one TXT record of the words, sorted, without repeats and
// comma-separated; none when there are no words. The text is cut into
// the 255-byte strings TXT holds; clients join them.
func (s *Server) txt(words []string) []dns.RR {
	slices.Sort(words)
	words = slices.Compact(words)
	if len(words) == 0 {
		return nil
	}
	text := strings.Join(words, ",")
	var parts []string
	for len(text) > 255 {
		parts = append(parts, text[:255])
		text = text[255:]
	}
	parts = append(parts, text)
	return []dns.RR{&dns.TXT{Hdr: s.hdr(dns.TypeTXT), Txt: parts}}
}

// soa is the zone's, for negative answers: its minimum is how long a
// resolver may remember that a name does not exist.
func (s *Server) soa() dns.RR {
	return &dns.SOA{
		Hdr: dns.RR_Header{Name: "internal.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.cfg.TTL},
		Ns:  "ns.internal.", Mbox: "hostmaster.internal.",
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: s.cfg.TTL,
	}
}

func (s *Server) hdr(typ uint16) dns.RR_Header {
	return dns.RR_Header{Rrtype: typ, Class: dns.ClassINET, Ttl: s.cfg.TTL}
}
