package internaldns_test

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/perchhq/perch/internal/internaldns"
)

// upstream is a resolver for the tests, on one port for UDP and TCP:
// example.com has an address, big.example sixty, other names do not
// exist. It counts the queries it gets.
type upstream struct {
	addr    string
	queries atomic.Int32
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	var pc net.PacketConn
	var ln net.Listener
	for range 10 {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("no port free for both UDP and TCP")
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.queries.Add(1)
		m := new(dns.Msg).SetReply(req)
		q := req.Question[0]
		switch q.Name {
		case "example.com.":
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.1")})
		case "big.example.":
			for i := range 60 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i+1))})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return u
}

func TestForward(t *testing.T) {
	up := newUpstream(t)
	w := &world{}
	w.set(allMachines()...)
	s := start(t, "127.0.0.1:0", internaldns.Config{Source: w, Upstream: []string{up.addr}})
	for _, network := range []string{"udp", "tcp"} {
		rcode, got := answers(query(t, s.Addr(), network, nil, "example.com.", dns.TypeA))
		if rcode != "NOERROR" || !slices.Equal(got, []string{"192.0.2.1"}) {
			t.Errorf("example.com over %s = %s %q, want the upstream's 192.0.2.1", network, rcode, got)
		}
		if rcode, _ := answers(query(t, s.Addr(), network, nil, "missing.example.", dns.TypeA)); rcode != "NXDOMAIN" {
			t.Errorf("missing.example over %s = %s, want the upstream's NXDOMAIN", network, rcode)
		}
	}
	// Too big for UDP: truncated, so the client asks again over TCP and
	// gets it all.
	if resp := query(t, s.Addr(), "udp", nil, "big.example.", dns.TypeA); !resp.Truncated {
		t.Errorf("big.example over UDP: %d records, not truncated", len(resp.Answer))
	}
	if _, got := answers(query(t, s.Addr(), "tcp", nil, "big.example.", dns.TypeA)); len(got) != 60 {
		t.Errorf("big.example over TCP: %d records, want 60", len(got))
	}
	// Names under .internal never leave the host.
	before := up.queries.Load()
	for _, name := range []string{"web.internal.", "nope.internal.", "a.b.c.d.internal.", "internal."} {
		query(t, s.Addr(), "udp", nil, name, dns.TypeAAAA)
	}
	if n := up.queries.Load() - before; n != 0 {
		t.Errorf("%d queries for .internal names reached the upstream", n)
	}
}

// TestForwardFailures: a dead upstream is skipped for the next; when none
// answers the client hears SERVFAIL soon; with no upstream, REFUSED.
func TestForwardFailures(t *testing.T) {
	up := newUpstream(t)
	dead := closedPort(t)
	silent := silentPort(t)
	w := &world{}
	for _, tc := range []struct {
		name     string
		upstream []string
		rcode    string
	}{
		{"dead then good", []string{dead, up.addr}, "NOERROR"},
		{"silent then good", []string{silent, up.addr}, "NOERROR"},
		{"dead and silent", []string{dead, silent}, "SERVFAIL"},
		{"none", nil, "REFUSED"},
	} {
		s := start(t, "127.0.0.1:0", internaldns.Config{Source: w, Upstream: tc.upstream, ForwardTimeout: 300 * time.Millisecond})
		for _, network := range []string{"udp", "tcp"} {
			begin := time.Now()
			rcode, _ := answers(query(t, s.Addr(), network, nil, "example.com.", dns.TypeA))
			if rcode != tc.rcode {
				t.Errorf("%s over %s: %s, want %s", tc.name, network, rcode, tc.rcode)
			}
			if took := time.Since(begin); took > 3*time.Second {
				t.Errorf("%s over %s: answered after %v; a failing upstream must not hold the client", tc.name, network, took)
			}
		}
	}
}

// closedPort is an address nothing listens on, UDP or TCP.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// silentPort takes queries over UDP and TCP and never answers.
func silentPort(t *testing.T) string {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		t.Cleanup(func() { pc.Close(); ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		return pc.LocalAddr().String()
	}
	t.Fatal("no port free for both UDP and TCP")
	return ""
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	conf := "# a comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions ndots:2\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := internaldns.UpstreamsFromResolvConf(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"192.0.2.53:53", "[2001:db8::53]:53"}, got); diff != "" {
		t.Errorf("upstreams (-want +got):\n%s", diff)
	}
	if _, err := internaldns.UpstreamsFromResolvConf(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("a missing resolv.conf gave no error")
	}
}
