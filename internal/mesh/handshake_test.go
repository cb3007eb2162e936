package mesh

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// Two hosts that learn of each other at different moments, 300 ms round
// trip apart (antipodal regions): whichever order and gap, they connect
// within about a second of the later one knowing the other, never after
// WireGuard's 5 s retry. When both sides initiate
// within half a round trip, WireGuard has each drop the other's answer
// and retries only after 5 s, with the same timing on both sides, so the
// pair can stay apart for 5–17 s (agents of a dev world that joined
// together did, their edges answering 502 for apps on the other host).
func TestFirstHandshakeOfAPairNeverCollides(t *testing.T) {
	oneWay := func(from, to string) time.Duration {
		if from == to {
			return 0
		}
		return 150 * time.Millisecond
	}
	// Gaps around the moments a side acts: at once, one probe interval, the
	// old grace of 1 s (gaps of 0.95-1.1 s failed before, not connected
	// within 5 s), handshakeFallback (where the two initiations cross), and
	// after it.
	gaps := []time.Duration{0, 100 * time.Millisecond, time.Second, 1050 * time.Millisecond, 1500 * time.Millisecond, 2 * time.Second}
	for _, smallerFirst := range []bool{true, false} {
		for _, gap := range gaps {
			t.Run(fmt.Sprintf("smaller first %v, gap %v", smallerFirst, gap), func(t *testing.T) {
				t.Parallel()
				a := newNode(t, 1, func(c *Config) { c.OneWay = oneWay })
				b := newNode(t, 2, func(c *Config) { c.OneWay = oneWay })
				ka, kb := a.cfg.Key.Public(), b.cfg.Key.Public()
				small, large := a, b
				if bytes.Compare(ka[:], kb[:]) > 0 {
					small, large = b, a
				}
				first, second := large, small
				if smallerFirst {
					first, second = small, large
				}
				peers := []Peer{a.Self(loopback), b.Self(loopback)}
				start := time.Now()
				if err := first.SetPeers(peers); err != nil {
					t.Fatal(err)
				}
				time.Sleep(gap) // the other host learns later: the case tested
				if err := second.SetPeers(peers); err != nil {
					t.Fatal(err)
				}
				// The first try takes a round trip or two after the later
				// side knows the other; a retry would take 5 s.
				eventually(t, 4500*time.Millisecond, "both sides measured the other", func() error {
					if len(a.RTTs()) != 1 || len(b.RTTs()) != 1 {
						return fmt.Errorf("RTTs: %v and %v", a.RTTs(), b.RTTs())
					}
					return nil
				})
				t.Logf("connected %v after the later side knew the other", time.Since(start)-gap)
			})
		}
	}
}

// A host that restarts with its key (an agent restarted by its
// supervisor) is reached again within seconds, whichever side of the
// pair it is: the other still holds the old session and will not
// initiate for 15 s, so the restarted side, even the larger key, must.
func TestRestartedPeerReconnects(t *testing.T) {
	for _, restartLarger := range []bool{true, false} {
		t.Run(fmt.Sprintf("restarted is the larger key %v", restartLarger), func(t *testing.T) {
			t.Parallel()
			a := newNode(t, 1, nil)
			b := newNode(t, 2, nil)
			join(t, a, b)
			ka, kb := a.cfg.Key.Public(), b.cfg.Key.Public()
			stay, gone := a, b
			if (bytes.Compare(kb[:], ka[:]) > 0) != restartLarger {
				stay, gone = b, a
			}
			key, addr := gone.cfg.Key, gone.cfg.Addr
			gone.Close()
			back := newNode(t, 3, func(c *Config) { c.Key, c.Addr = key, addr })
			peers := []Peer{stay.Self(loopback), back.Self(loopback)}
			start := time.Now()
			if err := back.SetPeers(peers); err != nil {
				t.Fatal(err)
			}
			if err := stay.SetPeers(peers); err != nil { // the new endpoint, as the host list says
				t.Fatal(err)
			}
			// The restarted node's own probe answered: a round trip through
			// a session both sides hold.
			eventually(t, 4*time.Second, "the restarted host reaching the other", func() error {
				if _, ok := back.RTTs()[stay.cfg.Key.Public()]; !ok {
					return fmt.Errorf("no round trip yet")
				}
				return nil
			})
			t.Logf("reconnected %v after the restart", time.Since(start).Round(time.Millisecond))
		})
	}
}
