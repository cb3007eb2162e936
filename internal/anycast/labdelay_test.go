package anycast

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestLabLinkDelay: a lab whose lhr-ams link holds frames for 20 ms each
// way (TAP devices joined in user space) and whose ams-fra link is a
// plain veth. A TCP handshake from lhr's client to fra's client crosses
// the delayed link twice, so it takes at least 40 ms; one from ams's
// client does not cross it. Close leaves none of the lab's namespaces.
func TestLabLinkDelay(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the anycast lab needs root (network namespaces, bird, /dev/net/tun)")
	}
	for _, bin := range []string{"bird", "birdc", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("the anycast lab needs %s (bird2 and iproute2: scripts/deps.sh)", bin)
		}
	}
	const delay = 20 * time.Millisecond
	lab, err := NewLab(LabConfig{
		Cities: []LabCity{{Name: "lhr"}, {Name: "ams"}, {Name: "fra"}},
		Links:  [][2]string{{"lhr", "ams"}, {"ams", "fra"}},
		Dir:    t.TempDir(),
		LinkDelay: func(a, b string) time.Duration {
			if (a == "lhr" && b == "ams") || (a == "ams" && b == "lhr") {
				return delay
			}
			return 0
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			lab.Close()
		}
	})
	ln, err := ListenIn(filepath.Join("/run/netns", lab.ClientNS("fra")), net.JoinHostPort(lab.ClientAddr("fra").String(), "7"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	target := ln.Addr().String()
	// handshake is the shortest of five TCP handshakes from city's client
	// to fra's, once the routers have exchanged routes (30 s at most).
	handshake := func(city string) time.Duration {
		t.Helper()
		best := time.Duration(-1)
		deadline := time.Now().Add(30 * time.Second)
		for n := 0; n < 5; {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			start := time.Now()
			c, err := lab.Dial(ctx, city, "tcp", target)
			rtt := time.Since(start)
			cancel()
			if err != nil {
				if time.Now().After(deadline) {
					t.Fatalf("client in %s cannot reach %s: %v", city, target, err)
				}
				time.Sleep(100 * time.Millisecond)
				continue
			}
			c.Close()
			n++
			if best < 0 || rtt < best {
				best = rtt
			}
		}
		return best
	}
	far, near := handshake("lhr"), handshake("ams")
	t.Logf("TCP handshake to fra's client: from lhr (across the %s link) %s, from ams %s", delay, far, near)
	if far < 2*delay {
		t.Errorf("from lhr across a link delayed %s each way the handshake took %s: want at least %s", delay, far, 2*delay)
	}
	if near >= 2*delay {
		t.Errorf("from ams, not crossing the delayed link, the best handshake took %s: want under %s", near, 2*delay)
	}

	res := lab.Resources()
	if len(res.Namespaces) != 6 || len(res.Birds) != 3 {
		t.Fatalf("Resources: %+v; want 6 namespaces and 3 routers", res)
	}
	lab.Close()
	closed = true
	for _, ns := range res.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("namespace %s left after Close", ns)
		}
	}
}
