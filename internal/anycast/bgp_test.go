package anycast

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParsePeerAndASN(t *testing.T) {
	p, err := ParsePeer("203.0.113.1,64500,s3cret")
	if err != nil || p.Addr != netip.MustParseAddr("203.0.113.1") || p.ASN != 64500 || p.Password != "s3cret" {
		t.Fatalf("ParsePeer: %+v %v", p, err)
	}
	for _, bad := range []string{"203.0.113.1", "nope,64500", "203.0.113.1,0", "203.0.113.1,23456", "203.0.113.1,4294967295", "203.0.113.1,x", "203.0.113.1,99999999999"} {
		if _, err := ParsePeer(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePeer(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := StartSpeaker(context.Background(), SpeakerConfig{ASN: 0, RouterID: netip.MustParseAddr("192.0.2.1"), Peers: []Peer{p}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ASN 0: %v", err)
	}
}

// A peer that answers the BGP connection with garbage: the speaker keeps
// trying (logged by GoBGP), never calls the session established, and
// keeps its announcements, ready for when a real peer answers.
func TestSpeakerGarbagePeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\nthis is not BGP at all, not even a marker"))
			time.Sleep(50 * time.Millisecond)
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	sp, err := StartSpeaker(context.Background(), SpeakerConfig{
		ASN: 64512, RouterID: netip.MustParseAddr("192.0.2.254"), PeerPort: uint32(port), ConnectRetry: 1, HoldTime: 3,
		Peers: []Peer{{Addr: netip.MustParseAddr("127.0.0.1"), ASN: 64600}}, Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	addr := netip.MustParseAddr("192.0.2.10")
	sp.SetAddrs([]netip.Addr{addr})
	deadline := time.Now().Add(30 * time.Second)
	for conns.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if conns.Load() < 2 {
		t.Fatalf("the speaker connected %d times to the garbage peer; want it to keep retrying", conns.Load())
	}
	ss := sp.Sessions(context.Background())
	if len(ss) != 1 || ss[0].State == "established" {
		t.Fatalf("sessions with a garbage peer: %+v", ss)
	}
	if got := sp.Announced(); len(got) != 1 || got[0] != addr {
		t.Fatalf("announced %v, want %s", got, addr)
	}
	cs := sp.Collectors()
	if n := testutil.ToFloat64(cs[1]); n != 1 {
		t.Errorf("perch_bgp_prefixes_announced = %v, want 1", n)
	}
	if n := testutil.ToFloat64(cs[2]); n != 0 {
		t.Errorf("perch_bgp_sessions_established = %v with a garbage peer, want 0", n)
	}
	sp.SetHealthy(false)
	if got := sp.Announced(); len(got) != 0 {
		t.Fatalf("unhealthy speaker still announces %v", got)
	}
	if n := testutil.ToFloat64(cs[1]); n != 0 {
		t.Errorf("perch_bgp_prefixes_announced = %v after a withdrawal, want 0", n)
	}
}

// lockedBuf is a log destination tests read while the speaker writes.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A peer that refuses the connection: the speaker says so in its log
// (GoBGP itself would only at debug level), keeps retrying, and keeps its
// announcements.
func TestSpeakerRefusingPeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens: connections are refused
	var logs lockedBuf
	sp, err := StartSpeaker(context.Background(), SpeakerConfig{
		ASN: 64512, RouterID: netip.MustParseAddr("192.0.2.254"), PeerPort: uint32(port), ConnectRetry: 1, HoldTime: 3,
		Peers: []Peer{{Addr: netip.MustParseAddr("127.0.0.1"), ASN: 64600}}, Log: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	addr := netip.MustParseAddr("192.0.2.10")
	sp.SetAddrs([]netip.Addr{addr})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "peer not established") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line about the refusing peer within 30 s:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "peer=127.0.0.1") {
		t.Errorf("the log line does not name the peer:\n%s", logs.String())
	}
	if got := sp.Announced(); len(got) != 1 || got[0] != addr {
		t.Fatalf("announced %v with a refusing peer, want %s", got, addr)
	}
}
