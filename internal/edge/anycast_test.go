package edge

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/anycast"
)

// Apps' own addresses: two apps with raw TCP on one port are each
// reached on their own address (the collision is per address), and an
// HTTP request naming another app on an app's address is refused (421).
func TestDedicatedAddresses(t *testing.T) {
	w := newCertWorld(t, nil)
	port, web := freePort(t), freePort(t)
	says := func(s string) func(net.Conn) { return func(c net.Conn) { io.WriteString(c, s) } }
	w.app("db")
	w.app("cache")
	w.app("site")
	w.app("blog")
	w.serveOn("db", startTCP(t, "d1", "ams", "127.0.0.2", says("db")), tcpPort(port))
	w.serveOn("cache", startTCP(t, "c1", "ams", "127.0.0.3", says("cache")), tcpPort(port))
	w.serveOn("site", startMachine(t, "s1", "ams", "127.0.0.4", nil), tcpPort(web, "http"))
	w.serveOn("blog", startMachine(t, "b1", "ams", "127.0.0.5", nil), tcpPort(web, "http"))
	own := map[string]string{"db": "127.0.0.71", "cache": "127.0.0.72", "site": "127.0.0.73"}
	for app, ip := range own {
		w.e.table.setIP(anycast.Key(netip.MustParseAddr(ip)), anycast.Assignment{IP: netip.MustParseAddr(ip), App: app, Kind: anycast.KindV4})
	}
	w.e.table.setIP("shared.blog", anycast.Assignment{IP: netip.MustParseAddr("127.0.0.70"), App: "blog", Kind: anycast.KindSharedV4})
	w.commit()
	// db's, cache's and site's ports, and the shared address's HTTP port
	// (not the raw one: raw TCP needs an address of its own).
	waitFor(t, "the edge to listen on the apps' addresses", func() bool { return len(w.e.ListeningDedicated()) == 4 })
	shared := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.70"), uint16(web))
	if got := w.e.ListeningDedicated(); !slices.Contains(got, shared) {
		t.Errorf("listening on %v, want the shared address's HTTP port %s among them", got, shared)
	}

	read := func(addr string) string {
		t.Helper()
		c := dialEdge(t, addr)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	for _, app := range []string{"db", "cache"} {
		if got := read(net.JoinHostPort(own[app], strconv.Itoa(port))); got != app {
			t.Errorf("raw TCP on %s's own address answered by %q", app, got)
		}
	}

	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	ask := func(host string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", "http://"+net.JoinHostPort(own["site"], strconv.Itoa(web))+"/", nil)
		req.Host = host
		return do(t, c, req)
	}
	if res, body := ask("site.perch.local"); res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "s1" {
		t.Errorf("site on its own address: %d %q", res.StatusCode, body)
	}
	if res, body := ask("blog.perch.local"); res.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("blog on site's address: %d %q, want 421", res.StatusCode, body)
	}

	// On the shared address, apps are told apart by Host.
	req, _ := http.NewRequest("GET", "http://"+shared.String()+"/", nil)
	req.Host = "blog.perch.local"
	if res, body := do(t, c, req); res.StatusCode != http.StatusOK || answeredBy(t, body).Machine != "b1" {
		t.Errorf("blog on the shared address: %d %q", res.StatusCode, body)
	}

	// The address released: its listener goes.
	w.e.table.removeIP(anycast.Key(netip.MustParseAddr(own["cache"])))
	w.commit()
	waitFor(t, "cache's address to close", func() bool { return len(w.e.ListeningDedicated()) == 3 })
}

// Two apps with UDP on one port number, each on its own address: each
// address's datagrams go to its own app (a datagram names no app, but
// the address it was sent to does); the address released, its socket
// closes.
func TestDedicatedUDP(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("dns1")
	w.app("dns2")
	w.serveUDP("dns1", startUDP(t, "one", "ams", "127.0.0.2", 0), port)
	w.serveUDP("dns2", startUDP(t, "two", "ams", "127.0.0.3", 0), port)
	own := map[string]string{"dns1": "127.0.0.74", "dns2": "127.0.0.75"}
	for app, ip := range own {
		w.e.table.setIP(anycast.Key(netip.MustParseAddr(ip)), anycast.Assignment{IP: netip.MustParseAddr(ip), App: app, Kind: anycast.KindV4})
	}
	w.commit()
	waitFor(t, "the edge to open UDP on both apps' addresses", func() bool { return len(w.e.ListeningDedicatedUDP()) == 2 })
	for app, want := range map[string]string{"dns1": "one", "dns2": "two"} {
		c, err := net.Dial("udp", net.JoinHostPort(own[app], strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 3 {
			msg := "q" + strconv.Itoa(i)
			if got := ask(t, c, msg); got != want+":"+msg {
				t.Errorf("UDP to %s's own address: %q, want %q (its own machine)", app, got, want+":"+msg)
			}
		}
	}
	w.e.table.removeIP(anycast.Key(netip.MustParseAddr(own["dns2"])))
	w.commit()
	waitFor(t, "dns2's address to close", func() bool { return len(w.e.ListeningDedicatedUDP()) == 1 })
}
