package mesh

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// Two hosts that learn of each other at different moments, 300 ms apart
// (a round trip of antipodal regions): whichever order and gap, their
// first handshake completes at the first try. When both sides initiate
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
	// Gaps around the moments a side acts: at once, one probe interval,
	// handshakeGrace, and a probe's wait.
	gaps := []time.Duration{0, 100 * time.Millisecond, 950 * time.Millisecond, time.Second, 1050 * time.Millisecond, 1100 * time.Millisecond, 2 * time.Second}
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
