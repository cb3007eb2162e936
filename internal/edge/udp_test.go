package edge

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// startUDP runs a fake machine that answers each datagram with its id and
// the datagram, and counts the client addresses it saw.
func startUDP(t *testing.T, id, region, ip string, port int) *machine {
	t.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	m := &machine{id: id, region: region, ip: ip, port: pc.LocalAddr().(*net.UDPAddr).Port}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			m.hits.Add(1)
			pc.WriteTo([]byte(id+":"+string(buf[:n])), from)
		}
	}()
	return m
}

// serveUDP places m in app with one UDP service on public port, started.
func (w *world) serveUDP(app string, m *machine, port int) {
	if _, ok := w.e.table.hosts["h-"+m.region]; !ok {
		w.host(m.region, "up")
	}
	w.e.table.setMachine(store.MachineKey(app, m.id), store.MachineSpec{
		ID: m.id, App: app, Region: m.region, HostID: "h-" + m.region, PrivateIP: m.ip,
		Desired: store.DesireStarted, UpdatedAt: time.Now(),
		Config: api.MachineConfig{Services: []api.Service{{Protocol: "udp", InternalPort: m.port, Ports: []api.Port{{Port: port}}}}},
	})
	w.state(app, m, api.StateStarted)
}

// ask sends msg from c and returns the answer.
func ask(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 65535)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("answer to %q: %v", msg, err)
	}
	return string(b[:n])
}

// A UDP service: the edge opens the public UDP port, carries each client's
// datagrams to one machine and its answers back, keeps a client on its
// machine, spreads clients over machines, and serves the same port number
// over TCP for another service of the app (DNS on 53 is both); a UDP
// service is never served as TCP.
func TestUDPService(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("dns")
	m1 := startUDP(t, "u1", "ams", "127.0.0.2", 0)
	m2 := startUDP(t, "u2", "ams", "127.0.0.3", 0)
	w.serveUDP("dns", m1, port)
	w.serveUDP("dns", m2, port)
	w.commit()
	waitFor(t, "the edge to open the UDP port", func() bool { return slices.Contains(w.e.ListeningUDP(), port) })
	if slices.Contains(w.e.Listening(), port) {
		t.Errorf("the edge listens on TCP %d for a UDP-only service", port)
	}
	edge := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	machines := map[string]int{}
	for i := range 6 {
		c, err := net.Dial("udp", edge)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		first := ask(t, c, "q0")
		id, _, _ := strings.Cut(first, ":")
		machines[id]++
		for j := 1; j < 5; j++ {
			msg := fmt.Sprintf("client %d query %d", i, j)
			if got := ask(t, c, msg); got != id+":"+msg {
				t.Fatalf("client %d: answer %q, want %q (the same machine, the datagram whole)", i, got, id+":"+msg)
			}
		}
	}
	if len(machines) != 2 {
		t.Errorf("6 clients went to %v; want both machines used", machines)
	}
	big := strings.Repeat("d", 8000)
	c, _ := net.Dial("udp", edge)
	defer c.Close()
	if got := ask(t, c, big); !strings.HasSuffix(got, ":"+big) {
		t.Errorf("an 8000-byte datagram came back as %d bytes", len(got))
	}

	// The same port number over TCP for another service of the app.
	tm := startTCP(t, "t1", "ams", "127.0.0.4", echoTCP)
	w.e.table.setMachine(store.MachineKey("dns", "t1"), store.MachineSpec{
		ID: "t1", App: "dns", Region: "ams", HostID: "h-ams", PrivateIP: tm.ip,
		Desired: store.DesireStarted, UpdatedAt: time.Now(),
		Config: api.MachineConfig{Services: []api.Service{{Protocol: "tcp", InternalPort: tm.port, Ports: []api.Port{{Port: port}}}}},
	})
	w.state("dns", tm, api.StateStarted)
	w.listening(port)
	tc := dialEdge(t, edge)
	defer tc.Close()
	tc.Write([]byte("tcp!"))
	b := make([]byte, 4)
	_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := tc.Read(b); err != nil || string(b) != "tcp!" {
		t.Errorf("TCP on the UDP service's port: %q, %v; want the TCP machine's echo", b, err)
	}
	if got := ask(t, c, "still udp"); !strings.HasSuffix(got, ":still udp") {
		t.Errorf("UDP after TCP joined the port: %q", got)
	}

	// The app goes: the UDP port closes.
	for _, id := range []string{"u1", "u2", "t1"} {
		w.e.table.removeMachine(store.MachineKey("dns", id))
	}
	w.commit()
	waitFor(t, "the UDP port to close", func() bool { return len(w.e.ListeningUDP()) == 0 })
}

// A UDP flow with no machine to go to drops its datagrams and says why in
// the access log and the app's log; once a machine is in rotation, the
// next datagram is carried.
func TestUDPNoMachine(t *testing.T) {
	w := newCertWorld(t, nil)
	port := freePort(t)
	w.app("dns")
	m := startUDP(t, "u1", "ams", "127.0.0.2", 0)
	w.serveUDP("dns", m, port)
	w.state("dns", m, api.StateStopped)
	w.commit()
	waitFor(t, "the edge to open the UDP port", func() bool { return slices.Contains(w.e.ListeningUDP(), port) })
	c, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("lost"))
	waitFor(t, "the flow to end without a machine", func() bool {
		return counter(t, w.e, "perch_edge_udp_flows_total", map[string]string{"app": "dns", "outcome": rejectNoMachine}) == 1
	})
	if got := counter(t, w.e, "perch_edge_udp_dropped_total", map[string]string{"app": "dns", "reason": "no_machine"}); got != 1 {
		t.Errorf("datagrams dropped for no machine = %v, want 1", got)
	}
	if m.hits.Load() != 0 {
		t.Errorf("a stopped machine got %d datagrams", m.hits.Load())
	}
	w.state("dns", m, api.StateStarted)
	w.commit()
	if got := ask(t, c, "found"); got != "u1:found" {
		t.Errorf("after the machine started: %q", got)
	}
}
