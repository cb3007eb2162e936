package internaldns_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/perchhq/perch/internal/internaldns"
	"github.com/perchhq/perch/internal/testport"
)

// world is a view of machines a test can change while the server runs.
type world struct {
	mu sync.Mutex
	ms []internaldns.Machine
}

func (w *world) Machines() []internaldns.Machine {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ms)
}

func (w *world) set(ms ...internaldns.Machine) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ms = ms
}

// Machines of two organisations: acme runs web in two regions and db;
// other runs secret. The 6PN addresses follow mesh.MachineAddr.
var (
	webAms1 = internaldns.Machine{App: "web", ID: "0a1", Region: "ams", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:1::ac1e:102"), IPv4: netip.MustParseAddr("172.30.1.2"), Started: true}
	webAms2 = internaldns.Machine{App: "web", ID: "0a2", Region: "ams", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:1::ac1e:103"), IPv4: netip.MustParseAddr("172.30.1.3"), Started: true}
	webIad  = internaldns.Machine{App: "web", ID: "0b1", Region: "iad", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:2::ac1e:202"), IPv4: netip.MustParseAddr("172.30.2.2"), Started: true}
	webSyd  = internaldns.Machine{App: "web", ID: "0c1", Region: "syd", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:3::ac1e:302"), IPv4: netip.MustParseAddr("172.30.3.2"), Started: false}
	db      = internaldns.Machine{App: "db", ID: "0d1", Region: "ams", Org: "acme", Addr: netip.MustParseAddr("fdaa:0:1::ac1e:104"), IPv4: netip.MustParseAddr("172.30.1.4"), Started: true}
	// The source addresses of the isolation test: 127.0.0.2 is a
	// machine of other, ::1 one of acme.
	secret  = internaldns.Machine{App: "secret", ID: "0e1", Region: "ams", Org: "other", Addr: netip.MustParseAddr("fdaa:0:1::ac1e:105"), IPv4: netip.MustParseAddr("127.0.0.2"), Started: true}
	acmeLo6 = internaldns.Machine{App: "db", ID: "0d2", Region: "iad", Org: "acme", Addr: netip.MustParseAddr("::1"), Started: false}
)

func allMachines() []internaldns.Machine {
	return []internaldns.Machine{webAms1, webAms2, webIad, webSyd, db, secret, acmeLo6}
}

// start runs a server on addr with cfg's other fields and stops it when
// the test ends.
func start(t *testing.T, addr string, cfg internaldns.Config) *internaldns.Server {
	t.Helper()
	cfg.Addr = addr
	cfg.Log = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := internaldns.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// query asks server the question over network ("udp" or "tcp"), from
// local (nil for any address).
func query(t *testing.T, server, network string, local net.IP, qname string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 5 * time.Second, Dialer: &net.Dialer{Timeout: 5 * time.Second}}
	if local != nil {
		if network == "udp" {
			c.Dialer.LocalAddr = &net.UDPAddr{IP: local}
		} else {
			c.Dialer.LocalAddr = &net.TCPAddr{IP: local}
		}
	}
	m := new(dns.Msg).SetQuestion(qname, qtype)
	resp, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", qname, dns.TypeToString[qtype], network, err)
	}
	if resp.Id != m.Id {
		t.Fatalf("answer id %d, asked %d", resp.Id, m.Id)
	}
	return resp
}

// answers sums up a reply as its code and its records' data, sorted.
func answers(resp *dns.Msg) (string, []string) {
	var data []string
	for _, rr := range resp.Answer {
		switch rr := rr.(type) {
		case *dns.AAAA:
			data = append(data, rr.AAAA.String())
		case *dns.A:
			data = append(data, rr.A.String())
		case *dns.TXT:
			data = append(data, "txt:"+strings.Join(rr.Txt, ""))
		default:
			data = append(data, rr.String())
		}
	}
	slices.Sort(data)
	return dns.RcodeToString[resp.Rcode], data
}

func TestNames(t *testing.T) {
	w := &world{}
	w.set(allMachines()...)
	s := start(t, "127.0.0.1:0", internaldns.Config{Source: w})
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode string
		want  []string
	}{
		// The app: started machines only, every region.
		{"web.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:1::ac1e:102", "fdaa:0:1::ac1e:103", "fdaa:0:2::ac1e:202"}},
		{"WeB.InTeRnAl.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:1::ac1e:102", "fdaa:0:1::ac1e:103", "fdaa:0:2::ac1e:202"}},
		{"web.internal.", dns.TypeA, "NOERROR", nil}, // NODATA: the name exists
		{"web.internal.", dns.TypeTXT, "NOERROR", nil},
		{"db.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:1::ac1e:104"}},
		// A region of the app.
		{"ams.web.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:1::ac1e:102", "fdaa:0:1::ac1e:103"}},
		{"IAD.web.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:2::ac1e:202"}},
		{"syd.web.internal.", dns.TypeAAAA, "NOERROR", nil}, // its machine is stopped
		{"ams.web.internal.", dns.TypeA, "NOERROR", nil},
		{"fra.web.internal.", dns.TypeAAAA, "NXDOMAIN", nil}, // the app has no machine there
		// One machine, started or not.
		{"0a2.vm.web.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:1::ac1e:103"}},
		{"0C1.VM.web.internal.", dns.TypeAAAA, "NOERROR", []string{"fdaa:0:3::ac1e:302"}},
		{"0c1.vm.web.internal.", dns.TypeA, "NOERROR", nil},
		{"0d1.vm.web.internal.", dns.TypeAAAA, "NXDOMAIN", nil}, // db's machine, not web's
		// Lists.
		{"_apps.internal.", dns.TypeTXT, "NOERROR", []string{"txt:db,secret,web"}},
		{"_apps.internal.", dns.TypeAAAA, "NOERROR", nil},
		{"regions.web.internal.", dns.TypeTXT, "NOERROR", []string{"txt:ams,iad"}},
		{"regions.db.internal.", dns.TypeTXT, "NOERROR", []string{"txt:ams"}},
		// Names that do not exist.
		{"nope.internal.", dns.TypeAAAA, "NXDOMAIN", nil},
		{"nope.internal.", dns.TypeA, "NXDOMAIN", nil},
		{"ams.nope.internal.", dns.TypeAAAA, "NXDOMAIN", nil},
		{"regions.nope.internal.", dns.TypeTXT, "NXDOMAIN", nil},
		{"0a1.vm.nope.internal.", dns.TypeAAAA, "NXDOMAIN", nil},
		{"a.b.c.web.internal.", dns.TypeAAAA, "NXDOMAIN", nil},
		{"internal.", dns.TypeAAAA, "NOERROR", nil},
	} {
		for _, network := range []string{"udp", "tcp"} {
			resp := query(t, s.Addr(), network, nil, tc.name, tc.qtype)
			rcode, got := answers(resp)
			if rcode != tc.rcode || !slices.Equal(got, tc.want) {
				t.Errorf("%s %s over %s = %s %q, want %s %q", tc.name, dns.TypeToString[tc.qtype], network, rcode, got, tc.rcode, tc.want)
			}
			if !resp.Authoritative {
				t.Errorf("%s over %s: answer not authoritative", tc.name, network)
			}
			for _, rr := range resp.Answer {
				if rr.Header().Name != tc.name || rr.Header().Ttl != 5 {
					t.Errorf("%s over %s: record %v, want the name as asked and TTL 5", tc.name, network, rr)
				}
			}
			// A negative answer carries the zone's SOA, so resolvers
			// know how long to remember it.
			if len(resp.Answer) == 0 && (len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA) {
				t.Errorf("%s over %s: negative answer without the SOA: %v", tc.name, network, resp.Ns)
			}
		}
	}

	// The view is read per query: a machine that starts is answered at once.
	started := webSyd
	started.Started = true
	w.set(webAms1, started)
	if _, got := answers(query(t, s.Addr(), "udp", nil, "web.internal.", dns.TypeAAAA)); !slices.Equal(got, []string{"fdaa:0:1::ac1e:102", "fdaa:0:3::ac1e:302"}) {
		t.Errorf("after the view changed web.internal = %q", got)
	}
	if rcode, _ := answers(query(t, s.Addr(), "udp", nil, "db.internal.", dns.TypeAAAA)); rcode != "NXDOMAIN" {
		t.Errorf("db.internal after db left the view: %s, want NXDOMAIN", rcode)
	}
}

// TestIsolation: a machine sees its own organisation's apps only, whether
// it asks from its IPv4 or its 6PN address; the host sees every app.
func TestIsolation(t *testing.T) {
	w := &world{}
	w.set(allMachines()...)
	s4 := start(t, "127.0.0.1:0", internaldns.Config{Source: w})
	s6 := start(t, "[::1]:0", internaldns.Config{Source: w})
	for _, tc := range []struct {
		who    string
		server string
		local  net.IP
		apps   string
		see    []string // app names answered
		hidden []string // app names that look missing
	}{
		{"machine of other, by IPv4", s4.Addr(), net.ParseIP("127.0.0.2"), "txt:secret", []string{"secret"}, []string{"web", "db"}},
		{"machine of acme, by 6PN", s6.Addr(), net.ParseIP("::1"), "txt:db,web", []string{"web", "db"}, []string{"secret"}},
		{"the host", s4.Addr(), net.ParseIP("127.0.0.1"), "txt:db,secret,web", []string{"web", "db", "secret"}, nil},
	} {
		for _, network := range []string{"udp", "tcp"} {
			q := func(name string, qtype uint16) (string, []string) {
				return answers(query(t, tc.server, network, tc.local, name, qtype))
			}
			if _, got := q("_apps.internal.", dns.TypeTXT); !slices.Equal(got, []string{tc.apps}) {
				t.Errorf("%s over %s: _apps.internal = %q, want %q", tc.who, network, got, tc.apps)
			}
			for _, app := range tc.see {
				if rcode, _ := q(app+".internal.", dns.TypeAAAA); rcode != "NOERROR" {
					t.Errorf("%s over %s: %s.internal = %s, want NOERROR", tc.who, network, app, rcode)
				}
			}
			for _, app := range tc.hidden {
				for _, name := range []string{app + ".internal.", "ams." + app + ".internal.", "regions." + app + ".internal.", "0a1.vm." + app + ".internal."} {
					if rcode, got := q(name, dns.TypeAAAA); rcode != "NXDOMAIN" || len(got) > 0 {
						t.Errorf("%s over %s: %s = %s %q, want NXDOMAIN", tc.who, network, name, rcode, got)
					}
				}
			}
		}
	}

	// A source two organisations claim (a stale view) sees nothing.
	clash := secret
	clash.Org, clash.App, clash.IPv4 = "acme", "web", netip.MustParseAddr("127.0.0.2")
	w.set(append(allMachines(), clash)...)
	if rcode, got := answers(query(t, s4.Addr(), "udp", net.ParseIP("127.0.0.2"), "web.internal.", dns.TypeAAAA)); rcode != "NXDOMAIN" {
		t.Errorf("a source of two organisations: web.internal = %s %q, want NXDOMAIN", rcode, got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	w := &world{}
	for _, tc := range []struct {
		cfg  internaldns.Config
		want string
	}{
		{internaldns.Config{Addr: "127.0.0.1:0"}, "Source"},
		{internaldns.Config{Addr: "127.0.0.1", Source: w}, "host:port"},
		{internaldns.Config{Addr: "127.0.0.1:0", Source: w, Upstream: []string{"192.0.2.53"}}, "host:port"},
	} {
		if _, err := internaldns.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): err = %v, want one saying %q", tc.cfg, err, tc.want)
		}
	}
	// The port of a running server is taken, for UDP and TCP alike.
	s := start(t, "127.0.0.1:0", internaldns.Config{Source: w})
	if _, err := internaldns.New(internaldns.Config{Addr: s.Addr(), Source: w}); err == nil {
		t.Error("New on a port in use succeeded")
	}
}

// TestRunStops: Run returns once its context ends, and the port is free
// again.
func TestRunStops(t *testing.T) {
	// A port below the ephemeral range: with port 0 another package's
	// outgoing UDP socket could take the number once Run freed it.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testport.Free(t)))
	s, err := internaldns.New(internaldns.Config{Addr: addr, Source: &world{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	query(t, s.Addr(), "tcp", nil, "web.internal.", dns.TypeAAAA)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	for _, network := range []string{"udp", "tcp"} {
		var err error
		if network == "udp" {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", s.Addr()); err == nil {
				pc.Close()
			}
		} else {
			var ln net.Listener
			if ln, err = net.Listen("tcp", s.Addr()); err == nil {
				ln.Close()
			}
		}
		if err != nil {
			t.Errorf("%s port still taken after Run returned: %v", network, err)
		}
	}
}
