package mesh

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// EchoPort is the UDP port on every mesh address that echoes what it
// gets, for RTT probes (the old echo service's number; netstack needs no
// privilege for it).
const EchoPort = 7

const (
	rttWindow   = 5 // samples kept per peer; RTTs reports their median
	rttMaxFails = 3 // consecutive lost probes before a peer has no RTT
	probeWait   = time.Second
	// handshakeFallback is how long the larger key of a new pair leaves
	// the first handshake to the smaller one before probing itself: more
	// than a round trip across the simulated world (300 ms antipodal at
	// 1.5 inflation) after both learn of each other at about the same
	// time, and short, because a peer that restarted with its key holds
	// no session while the other side still has one and will not initiate
	// for 15 s. Should the two initiations still cross, the smaller key's
	// next failed probe starts its handshake anew (loop).
	handshakeFallback = 1500 * time.Millisecond
)

// rttProber measures round trips to every peer through the mesh.
type rttProber struct {
	n        *Node
	interval time.Duration

	mu      sync.Mutex
	peers   map[PublicKey]netip.Addr
	samples map[PublicKey][]time.Duration
	fails   map[PublicKey]int
	// notBefore holds new peers this node leaves to initiate (the pair's
	// smaller key): not probed until their handshake is done, or until
	// the time given (handshakeFallback).
	notBefore map[PublicKey]time.Time
	kick      chan PublicKey // a new peer: probe it now rather than at the next tick
}

func startRTT(ctx context.Context, n *Node, wg *sync.WaitGroup) (*rttProber, error) {
	echo, err := n.net.listenUDP(netip.AddrPortFrom(n.cfg.Addr, EchoPort))
	if err != nil {
		return nil, fmt.Errorf("mesh: rtt echo: %w", err)
	}
	r := &rttProber{
		n:         n,
		interval:  n.cfg.RTTInterval,
		peers:     map[PublicKey]netip.Addr{},
		samples:   map[PublicKey][]time.Duration{},
		fails:     map[PublicKey]int{},
		notBefore: map[PublicKey]time.Time{},
		kick:      make(chan PublicKey, 16),
	}
	if r.interval <= 0 {
		r.interval = 2 * time.Second
	}
	wg.Add(3)
	go func() { defer wg.Done(); <-ctx.Done(); echo.Close() }()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			k, from, err := echo.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			echo.WriteTo(buf[:k], from)
		}
	}()
	go func() { defer wg.Done(); r.loop(ctx) }()
	return r, nil
}

func (r *rttProber) setPeers(peers map[PublicKey]Peer, kick, wait []PublicKey) {
	r.mu.Lock()
	for _, k := range wait {
		r.notBefore[k] = time.Now().Add(handshakeFallback)
	}
	r.peers = map[PublicKey]netip.Addr{}
	for k, p := range peers {
		r.peers[k] = p.Addr
	}
	for k := range r.samples {
		if _, ok := peers[k]; !ok {
			delete(r.samples, k)
			delete(r.fails, k)
		}
	}
	for k := range r.notBefore {
		if _, ok := peers[k]; !ok {
			delete(r.notBefore, k)
		}
	}
	r.mu.Unlock()
	for _, k := range kick {
		select {
		case r.kick <- k:
		default: // the loop is busy; the tick will probe it
		}
	}
}

func (r *rttProber) loop(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		only := PublicKey{}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case only = <-r.kick:
		}
		var shook map[PublicKey]bool // asked of the device only when needed
		r.mu.Lock()
		if len(r.notBefore) > 0 {
			r.mu.Unlock()
			shook = r.n.handshakes()
			r.mu.Lock()
		}
		peers := make(map[PublicKey]netip.Addr, len(r.peers))
		now := time.Now()
		for k, a := range r.peers {
			if nb, ok := r.notBefore[k]; ok {
				if now.Before(nb) && !shook[k] {
					continue
				}
				delete(r.notBefore, k)
			}
			if only == (PublicKey{}) || only == k {
				peers[k] = a
			}
		}
		r.mu.Unlock()
		var (
			wg     sync.WaitGroup
			failMu sync.Mutex
			failed []PublicKey
		)
		for k, a := range peers {
			wg.Go(func() {
				d := r.probe(ctx, a)
				r.record(k, d)
				if d == 0 {
					failMu.Lock()
					failed = append(failed, k)
					failMu.Unlock()
				}
			})
		}
		wg.Wait()
		r.restartHandshakes(failed)
	}
}

// restartHandshakes starts anew the handshake with each peer of failed
// (its probe lost) that this node initiates with (the pair's smaller key)
// and has no session with: its initiation got no answer (the peer did not
// know it yet, or the peer's own crossed it), and WireGuard would try
// again only after 5 s. A peer with a session is left to WireGuard.
func (r *rttProber) restartHandshakes(failed []PublicKey) {
	if len(failed) == 0 {
		return
	}
	self := r.n.cfg.Key.Public()
	shook := r.n.handshakes()
	for _, k := range failed {
		if bytes.Compare(self[:], k[:]) < 0 && !shook[k] {
			r.n.resetHandshake(k)
		}
	}
}

// probe is one echo round trip; 0 means lost.
func (r *rttProber) probe(ctx context.Context, addr netip.Addr) time.Duration {
	c, err := r.n.net.dialUDP(netip.AddrPortFrom(addr, EchoPort))
	if err != nil {
		return 0
	}
	defer c.Close()
	nonce := make([]byte, 16)
	rand.Read(nonce)
	deadline := time.Now().Add(probeWait)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	start := time.Now()
	if _, err := c.Write(nonce); err != nil {
		return 0
	}
	buf := make([]byte, 64)
	for {
		k, err := c.Read(buf)
		if err != nil {
			return 0
		}
		if bytes.Equal(buf[:k], nonce) {
			return time.Since(start)
		}
	}
}

func (r *rttProber) record(k PublicKey, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.peers[k]; !ok {
		return // left while we probed
	}
	if d == 0 {
		r.fails[k]++
		if r.fails[k] >= rttMaxFails {
			delete(r.samples, k)
		}
		return
	}
	r.fails[k] = 0
	s := append(r.samples[k], d)
	if len(s) > rttWindow {
		s = s[len(s)-rttWindow:]
	}
	r.samples[k] = s
}

// RTTs is the measured round-trip time to each peer that answers: the
// median of the last few probes (so the first probe's handshake and one
// slow probe do not count). A peer whose last probes were all lost is
// absent.
func (n *Node) RTTs() map[PublicKey]time.Duration {
	r := n.rtt
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[PublicKey]time.Duration, len(r.samples))
	for k, s := range r.samples {
		s = slices.Clone(s)
		slices.Sort(s)
		out[k] = s[len(s)/2]
	}
	return out
}

// Lost is the peers whose last few probes were all lost: the ones to stop
// sending traffic to. A new peer not probed yet is not lost.
func (n *Node) Lost() map[PublicKey]bool {
	r := n.rtt
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[PublicKey]bool{}
	for k, f := range r.fails {
		if _, ok := r.peers[k]; ok && f >= rttMaxFails {
			out[k] = true
		}
	}
	return out
}

// answering says whether the last probe of the peer at mesh address addr
// was answered (a peer not probed yet counts as answering).
func (n *Node) answering(addr netip.Addr) bool {
	r := n.rtt
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, a := range r.peers {
		if a == addr {
			return r.fails[k] == 0
		}
	}
	return false
}
