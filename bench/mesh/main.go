// Command mesh measures TCP between two Perch mesh nodes (wireguard-go with
// netstack, UDP on loopback) against plain kernel TCP on loopback, in the
// same run: throughput over a few seconds and the round trip of a one-byte
// ping-pong. Results go to stdout; bench/README.md keeps the latest.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/mesh"
)

func main() {
	dur := flag.Duration("d", 3*time.Second, "throughput test duration")
	pings := flag.Int("n", 2000, "ping-pong round trips")
	flag.Parse()
	if err := run(*dur, *pings); err != nil {
		fmt.Fprintln(os.Stderr, "bench/mesh:", err)
		os.Exit(1)
	}
}

type path struct {
	name   string
	listen func() (net.Listener, error)
	dial   func(ctx context.Context, addr string) (net.Conn, error)
}

func run(dur time.Duration, pings int) error {
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
	type result struct {
		mbps float64
		rtt  time.Duration
	}
	var res []result
	for _, p := range paths {
		mbps, err := throughput(p, dur)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		rtt, err := pingPong(p, pings)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		fmt.Printf("%-52s throughput %8.1f MB/s   round trip median %v\n", p.name, mbps, rtt)
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
