package devcluster_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// TestUDPServicesEndToEnd deploys the sample app from a fly.toml with a UDP
// echo service and a DNS service on 53 over UDP and TCP (as DNS is) to iad
// only, and reaches both through the iad edge (a machine on its own host)
// and the ams edge (the machine on another host, datagrams over the mesh
// relay): every datagram is answered whole by the machine in iad.
func TestUDPServicesEndToEnd(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	info := w.Info()
	ref := pushGoImage(t, info, "./examples/hello", "hello:udp")
	echoPort := freePort(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fly.toml"), fmt.Sprintf(`
app = "udpapp"
primary_region = "iad"

[build]
  image = %q

[env]
  HELLO_UDP_ECHO_PORT = "7007"
  HELLO_DNS_PORT = "53"

[[services]]
  protocol = "udp"
  internal_port = 7007
  [[services.ports]]
    port = %d

[[services]]
  protocol = "udp"
  internal_port = 53
  [[services.ports]]
    port = 53

[[services]]
  protocol = "tcp"
  internal_port = 53
  [[services.ports]]
    port = 53
`, ref, echoPort))
	ctx := context.Background()
	if _, err := w.Client().CreateApp(ctx, api.CreateAppRequest{AppName: "udpapp"}); err != nil {
		t.Fatal(err)
	}
	mustPerch(t, w, dir, "deploy") // reads fly.toml: there is no perch.toml

	for _, r := range info.Regions {
		// UDP echo: several datagrams on one flow, each answered whole.
		echo := net.JoinHostPort(r.EdgeAddr, fmt.Sprint(echoPort))
		var c net.Conn
		eventually(t, 30*time.Second, "the "+r.Code+" edge carries UDP to the app", func() (bool, string) {
			if c != nil {
				c.Close()
			}
			var err error
			if c, err = net.Dial("udp", echo); err != nil {
				return false, err.Error()
			}
			got, err := udpAsk(c, "ping", time.Second)
			if err != nil {
				return false, err.Error()
			}
			return strings.HasPrefix(got, "iad ") && strings.HasSuffix(got, ": ping"), got
		})
		for i := range 20 {
			msg := fmt.Sprintf("datagram %d via %s %s", i, r.Code, strings.Repeat("x", i*300))
			got, err := udpAsk(c, msg, 5*time.Second)
			if err != nil || !strings.HasSuffix(got, ": "+msg) {
				t.Errorf("%s edge, datagram %d (%d bytes): %q, %v", r.Code, i, len(msg), got, err)
			}
		}
		c.Close()

		// DNS on 53, over UDP and over TCP, with a DNS client.
		for _, network := range []string{"udp", "tcp"} {
			cl := &dns.Client{Net: network, Timeout: 5 * time.Second}
			q := new(dns.Msg)
			q.SetQuestion("where.perch.test.", dns.TypeTXT)
			var txt string
			eventually(t, 20*time.Second, r.Code+" edge answers DNS over "+network, func() (bool, string) {
				in, _, err := cl.Exchange(q, net.JoinHostPort(r.EdgeAddr, "53"))
				if err != nil {
					return false, err.Error()
				}
				if len(in.Answer) != 1 {
					return false, in.String()
				}
				t, ok := in.Answer[0].(*dns.TXT)
				if !ok {
					return false, in.Answer[0].String()
				}
				txt = strings.Join(t.Txt, "")
				return true, txt
			})
			if !strings.HasPrefix(txt, "region=iad machine=") {
				t.Errorf("%s edge, DNS over %s: TXT %q, want the machine in iad", r.Code, network, txt)
			}
			a := new(dns.Msg)
			a.SetQuestion("host.perch.test.", dns.TypeA)
			in, _, err := cl.Exchange(a, net.JoinHostPort(r.EdgeAddr, "53"))
			if err != nil || len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "192.0.2.53" {
				t.Errorf("%s edge, A over %s: %v, %v", r.Code, network, in, err)
			}
		}
	}
}

// udpAsk sends msg on c and reads one datagram back.
func udpAsk(c net.Conn, msg string, timeout time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, 65535)
	n, err := c.Read(b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}
