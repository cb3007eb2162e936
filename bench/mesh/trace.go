package main

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/perchhq/perch/internal/mesh"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// tr, with -trace, timestamps the steps of the mesh's ping-pong round
// trips where the nodes' TUN devices and UDP binds meet wireguard-go:
// both nodes are in this process, so one clock orders them.
var tr *tracer

type step int

const (
	appWrite step = iota // the client writes its byte
	tunRead              // wireguard-go has a packet from a node's TUN device
	udpSend              // … and hands it, sealed, to the UDP socket
	udpRecv              // the other node's UDP socket gave it to wireguard-go
	tunWrite             // … which writes it, opened, into its TUN device
	appRead              // the client has the echo
)

var stepNames = [...]string{"app write", "TUN read", "UDP send", "UDP receive", "TUN write", "app read"}

type event struct {
	s    step
	node int // 0 the client's, 1 the server's; -1 the client itself
	t    time.Time
}

type tracer struct {
	on  atomic.Bool
	mu  sync.Mutex
	evs []event
}

func (t *tracer) add(s step, node int) {
	if t == nil || !t.on.Load() {
		return
	}
	now := time.Now()
	t.mu.Lock()
	t.evs = append(t.evs, event{s, node, now})
	t.mu.Unlock()
}

func (t *tracer) start() {
	if t != nil {
		t.on.Store(true)
	}
}

func (t *tracer) stop() {
	if t != nil {
		t.on.Store(false)
	}
}

// wrap has node's TUN device and bind report to t.
func (t *tracer) wrap(cfg *mesh.Config, node int) {
	if t == nil {
		return
	}
	cfg.WrapTUN = func(d tun.Device) tun.Device { return &traceTUN{Device: d, t: t, node: node} }
	cfg.WrapBind = func(b conn.Bind) conn.Bind { return &traceBind{Bind: b, t: t, node: node} }
}

type traceTUN struct {
	tun.Device
	t    *tracer
	node int
}

func (d *traceTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := d.Device.Read(bufs, sizes, offset)
	if n > 0 {
		d.t.add(tunRead, d.node)
	}
	return n, err
}

func (d *traceTUN) Write(bufs [][]byte, offset int) (int, error) {
	d.t.add(tunWrite, d.node)
	return d.Device.Write(bufs, offset)
}

type traceBind struct {
	conn.Bind
	t    *tracer
	node int
}

func (b *traceBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.t.add(udpSend, b.node)
	return b.Bind.Send(bufs, ep)
}

func (b *traceBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, p, err := b.Bind.Open(port)
	for i, f := range fns {
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := f(packets, sizes, eps)
			if n > 0 {
				b.t.add(udpRecv, b.node)
			}
			return n, err
		}
	}
	return fns, p, err
}

// roundTrip is the order of steps of one ping-pong round trip.
var roundTrip = []struct {
	s    step
	node int
}{
	{appWrite, -1}, {tunRead, 0}, {udpSend, 0}, {udpRecv, 1}, {tunWrite, 1},
	{tunRead, 1}, {udpSend, 1}, {udpRecv, 0}, {tunWrite, 0}, {appRead, -1},
}

// print shows, for the round trips whose steps were all seen in order
// (pure ACKs and retransmissions interleave others), the median time
// from each step to the next.
func (t *tracer) print() {
	if t == nil {
		return
	}
	t.mu.Lock()
	evs := t.evs
	t.evs = nil
	t.mu.Unlock()
	gaps := make([][]time.Duration, len(roundTrip))
	whole := 0
	for i, e := range evs {
		if e.s != appWrite {
			continue
		}
		var ts []time.Time
		for _, f := range evs[i:] {
			if len(ts) == len(roundTrip) || (f.s == appWrite && len(ts) > 0) {
				break
			}
			if want := roundTrip[len(ts)]; f.s == want.s && f.node == want.node {
				ts = append(ts, f.t)
			}
		}
		if len(ts) != len(roundTrip) {
			continue
		}
		whole++
		for k := 1; k < len(ts); k++ {
			gaps[k] = append(gaps[k], ts[k].Sub(ts[k-1]))
		}
	}
	fmt.Printf("  trace of %d whole round trips, median time to each step:", whole)
	var sum time.Duration
	for k := 1; k < len(roundTrip); k++ {
		if len(gaps[k]) == 0 {
			return
		}
		slices.Sort(gaps[k])
		m := gaps[k][len(gaps[k])/2]
		sum += m
		side := map[int]string{-1: "", 0: " (client's node)", 1: " (server's node)"}[roundTrip[k].node]
		fmt.Printf("\n    %-12s%-17s %v", stepNames[roundTrip[k].s], side, m)
	}
	fmt.Printf("\n    sum of medians %v\n", sum)
}
