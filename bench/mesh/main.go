// Command mesh measures TCP between two Perch mesh nodes against plain
// kernel TCP on the same path, in the same run: throughput over a few
// seconds and the round trip of a one-byte ping-pong. With -mode tun
// (root) the two nodes are in two network namespaces joined by a veth
// pair, each with its TUN device (mesh.ModeTUN), and plain TCP goes over
// that veth pair; with -mode netstack the nodes run netstack in this
// process over loopback UDP, against plain TCP on loopback. Results go to
// stdout; bench/README.md keeps the latest.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/mesh/meshtest"
)

func main() {
	dur := flag.Duration("d", 3*time.Second, "throughput test duration")
	pings := flag.Int("n", 2000, "ping-pong round trips")
	mode := flag.String("mode", "", "tun or netstack (default: tun when root with /dev/net/tun, else netstack)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the mesh path's throughput run to this file")
	flag.Parse()
	if *mode == "" {
		*mode = string(mesh.ModeNetstack)
		if mesh.TUNAvailable() == nil {
			*mode = string(mesh.ModeTUN)
		}
	}
	var err error
	switch mesh.Mode(*mode) {
	case mesh.ModeTUN:
		err = runTUN(*dur, *pings, *cpuprofile)
	case mesh.ModeNetstack:
		err = run(*dur, *pings, *cpuprofile)
	default:
		err = fmt.Errorf("-mode %q: want tun or netstack", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/mesh:", err)
		os.Exit(1)
	}
}

type path struct {
	name   string
	listen func() (net.Listener, error)
	dial   func(ctx context.Context, addr string) (net.Conn, error)
}

func run(dur time.Duration, pings int, cpuprofile string) error {
	a, b, err := twoNodes()
	if err != nil {
		return err
	}
	defer a.Close()
	defer b.Close()
	var d net.Dialer
	paths := []path{
		{"plain TCP, loopback", func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
			func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }},
		{"mesh TCP (wireguard-go + netstack over loopback UDP)", func() (net.Listener, error) { return b.Listen(0) },
			func(ctx context.Context, addr string) (net.Conn, error) { return a.DialContext(ctx, "tcp", addr) }},
	}
	return measure(paths, dur, pings, cpuprofile)
}

// measure runs both paths, the plain one first, and prints the ratios.
func measure(paths []path, dur time.Duration, pings int, cpuprofile string) error {
	type result struct {
		mbps float64
		rtt  time.Duration
	}
	var res []result
	for i, p := range paths {
		stop := func() {}
		if i == 1 && cpuprofile != "" {
			f, err := os.Create(cpuprofile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			stop = pprof.StopCPUProfile
		}
		mbps, err := throughput(p, dur)
		stop()
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		rtt, err := pingPong(p, pings)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		fmt.Printf("%-56s throughput %8.1f MB/s   round trip median %v\n", p.name, mbps, rtt)
		res = append(res, result{mbps, rtt})
	}
	fmt.Printf("ratio mesh/plain: throughput %.3f, round trip %.1fx (added %v)\n",
		res[1].mbps/res[0].mbps, float64(res[1].rtt)/float64(res[0].rtt), res[1].rtt-res[0].rtt)
	return nil
}

func twoNodes() (*mesh.Node, *mesh.Node, error) {
	var nodes []*mesh.Node
	for i := range 2 {
		key, err := mesh.GenerateKey()
		if err != nil {
			return nil, nil, err
		}
		n, err := mesh.New(mesh.Config{Key: key, Addr: netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i+1)), RTTInterval: time.Hour})
		if err != nil {
			return nil, nil, err
		}
		nodes = append(nodes, n)
	}
	lo := netip.MustParseAddr("127.0.0.1")
	peers := []mesh.Peer{nodes[0].Self(lo), nodes[1].Self(lo)}
	for _, n := range nodes {
		if err := n.SetPeers(peers); err != nil {
			return nil, nil, err
		}
	}
	return nodes[0], nodes[1], nil
}

// throughput streams from client to server for dur; MB/s is what the
// server read.
func throughput(p path, dur time.Duration) (float64, error) {
	l, err := p.listen()
	if err != nil {
		return 0, err
	}
	defer l.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	c, err := dialRetry(p, l.Addr().String())
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	c.SetWriteDeadline(start.Add(dur))
	for {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	c.Close()
	n := <-got
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

func pingPong(p path, count int) (time.Duration, error) {
	l, err := p.listen()
	if err != nil {
		return 0, err
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := dialRetry(p, l.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rtts := make([]time.Duration, 0, count)
	b := []byte{0}
	for range count {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		rtts = append(rtts, time.Since(start))
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], nil
}

// dialRetry covers the mesh's first handshake (WireGuard retries a lost
// one after 5 s).
func dialRetry(p path, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		c, err := p.dial(ctx, addr)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runTUN compares plain TCP over a veth pair between two network
// namespaces with mesh TCP between TUN-mode nodes in the same two
// namespaces, WireGuard's UDP over that veth pair.
func runTUN(dur time.Duration, pings int, cpuprofile string) error {
	pair, err := meshtest.NewPair()
	if err != nil {
		return err
	}
	defer pair.Close()
	var nodes [2]*mesh.Node
	for i := range nodes {
		key, err := mesh.GenerateKey()
		if err != nil {
			return err
		}
		err = pair.In(i, func() error {
			nodes[i], err = mesh.New(mesh.Config{Key: key, Addr: netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i+1)), TUN: "perchmesh", RTTInterval: time.Hour})
			return err
		})
		if err != nil {
			return err
		}
		defer nodes[i].Close()
	}
	peers := []mesh.Peer{nodes[0].Self(pair.Addr[0]), nodes[1].Self(pair.Addr[1])}
	for _, n := range nodes {
		if err := n.SetPeers(peers); err != nil {
			return err
		}
	}
	var d net.Dialer
	paths := []path{
		{"plain TCP, veth between two namespaces",
			func() (l net.Listener, err error) {
				err = pair.In(1, func() error {
					l, err = net.Listen("tcp", netip.AddrPortFrom(pair.Addr[1], 0).String())
					return err
				})
				return l, err
			},
			func(ctx context.Context, addr string) (c net.Conn, err error) {
				err = pair.In(0, func() error {
					c, err = d.DialContext(ctx, "tcp", addr)
					return err
				})
				return c, err
			}},
		{"mesh TCP (wireguard-go + kernel TUN, UDP over the veth)",
			func() (net.Listener, error) { return nodes[1].Listen(0) },
			func(ctx context.Context, addr string) (net.Conn, error) {
				return nodes[0].DialContext(ctx, "tcp", addr)
			}},
	}
	return measure(paths, dur, pings, cpuprofile)
}
