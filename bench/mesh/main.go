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
	"math"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/mesh/meshtest"
	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/sys/unix"
)

func main() {
	dur := flag.Duration("d", 3*time.Second, "throughput test duration")
	pings := flag.Int("n", 2000, "ping-pong round trips")
	mode := flag.String("mode", "", "tun or netstack (default: tun when root with /dev/net/tun, else netstack)")
	mtu := flag.Int("mtu", 0, "tun mode: the mesh MTU (the veth gets it + 80); 0 keeps 1420 on a 1500-byte veth")
	traceFlag := flag.Bool("trace", false, "time each step of the mesh's ping-pong round trips (TUN reads and writes, UDP sends and receives)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the mesh path's throughput run to this file")
	flag.Parse()
	if *traceFlag {
		tr = &tracer{}
	}
	if *mode == "" {
		*mode = string(mesh.ModeNetstack)
		if mesh.TUNAvailable() == nil {
			*mode = string(mesh.ModeTUN)
		}
	}
	var err error
	switch mesh.Mode(*mode) {
	case mesh.ModeTUN:
		err = runTUN(*dur, *pings, *cpuprofile, *mtu)
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
	res, err := measure(paths, dur, pings, cpuprofile, nil)
	if err != nil {
		return err
	}
	return printCrypto(mesh.MTU, res[0])
}

// A result is one path's numbers.
type result struct {
	mbps float64
	rtt  time.Duration
	// mbPerCPU is MB carried per CPU-second the process used in the
	// throughput phase (both ends and the benchmark, kernel time
	// included): what load on the machine does not change.
	mbPerCPU float64
}

// measure runs both paths, the plain one first, and prints the ratios.
// around, if set, runs before and after the mesh path's throughput phase
// (kernel counters in TUN mode).
func measure(paths []path, dur time.Duration, pings int, cpuprofile string, around func() func()) ([]result, error) {
	var res []result
	for i, p := range paths {
		stop := func() {}
		if i == 1 && cpuprofile != "" {
			f, err := os.Create(cpuprofile)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return nil, err
			}
			stop = pprof.StopCPUProfile
		}
		after := func() {}
		if i == 1 && around != nil {
			after = around()
		}
		u0 := usage()
		mbps, info, err := throughput(p, dur)
		u := usage().sub(u0)
		stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		s0 := schedCounts()
		rtt, err := pingPong(p, pings, i == 1)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
		sc := schedCounts().sub(s0)
		fmt.Printf("%-56s throughput %8.1f MB/s   round trip median %v\n", p.name, mbps, rtt)
		fmt.Printf("  throughput phase: this process ran %.2f cores (user %.2f, system %.2f); its threads waited %.2f core-seconds for a CPU; its peak RSS so far %d MiB\n",
			u.cpu.Seconds()/u.wall.Seconds(), u.user.Seconds()/u.wall.Seconds(), u.sys.Seconds()/u.wall.Seconds(), u.wait.Seconds(), u.maxRSS>>10)
		if info != "" {
			fmt.Println("  " + info)
		}
		if i == 1 {
			tr.print()
		}
		// The runtime times one in gTrackingPeriod (8) of each goroutine's
		// schedulings.
		fmt.Printf("  ping-pong: per round trip ≈%.0f goroutine wake-ups (runnable to running: median %v, mean %v), %.1f thread sleeps, %.1f preemptions\n",
			8*float64(sc.wakeups)/float64(pings), sc.median(), sc.mean(), float64(sc.nvcsw)/float64(pings), float64(sc.nivcsw)/float64(pings))
		after()
		res = append(res, result{mbps, rtt, mbps * u.wall.Seconds() / u.cpu.Seconds()})
	}
	fmt.Printf("ratio mesh/plain: throughput %.3f, round trip %.1fx (added %v)\n",
		res[1].mbps/res[0].mbps, float64(res[1].rtt)/float64(res[0].rtt), res[1].rtt-res[0].rtt)
	fmt.Printf("per CPU-second of this process: plain %.0f MB, mesh %.0f MB (ratio %.3f)\n",
		res[0].mbPerCPU, res[1].mbPerCPU, res[1].mbPerCPU/res[0].mbPerCPU)
	return res, nil
}

// printCrypto prints the cipher's own ceiling beside the plain path.
func printCrypto(mtu int, plain result) error {
	seal, open, both, err := cryptoCeiling(mtu, 500*time.Millisecond)
	if err != nil {
		return err
	}
	n := runtime.GOMAXPROCS(0)
	fmt.Printf("ChaCha20-Poly1305 alone (%d-byte packets, CPU time of one thread): seal %.0f MB/s, open %.0f MB/s, both %.0f MB/s per core;\n"+
		"  every byte sealed and opened on all %d cores, nothing else: %.0f MB/s = %.3f of plain\n",
		mtu, seal, open, both, n, both*float64(n), both*float64(n)/plain.mbps)
	return nil
}

// sched is the Go scheduler's count of goroutines made to run and its
// histogram of how long each waited runnable, and the process's context
// switches: the hand-offs of the ping-pong phase.
type sched struct {
	wakeups       uint64
	buckets       []float64
	counts        []uint64
	nvcsw, nivcsw int64
}

func schedCounts() sched {
	m := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(m)
	h := m[0].Value.Float64Histogram()
	s := sched{buckets: h.Buckets, counts: slices.Clone(h.Counts)}
	for _, c := range h.Counts {
		s.wakeups += c
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	s.nvcsw, s.nivcsw = ru.Nvcsw, ru.Nivcsw
	return s
}

func (s sched) sub(o sched) sched {
	d := sched{buckets: s.buckets, counts: make([]uint64, len(s.counts)), wakeups: s.wakeups - o.wakeups, nvcsw: s.nvcsw - o.nvcsw, nivcsw: s.nivcsw - o.nivcsw}
	for i := range s.counts {
		d.counts[i] = s.counts[i] - o.counts[i]
	}
	return d
}

func (s sched) median() time.Duration {
	var seen uint64
	for i, c := range s.counts {
		seen += c
		if seen*2 >= s.wakeups {
			return time.Duration(s.buckets[i+1] * 1e9).Round(10 * time.Nanosecond)
		}
	}
	return 0
}

func (s sched) mean() time.Duration {
	var sum float64
	for i, c := range s.counts {
		lo, hi := s.buckets[i], s.buckets[i+1]
		if math.IsInf(lo, -1) {
			lo = 0
		}
		if math.IsInf(hi, 1) {
			hi = lo
		}
		sum += float64(c) * (lo + hi) / 2
	}
	if s.wakeups == 0 {
		return 0
	}
	return time.Duration(sum / float64(s.wakeups) * 1e9).Round(10 * time.Nanosecond)
}

// rusage is the process's CPU over a phase.
type rusage struct {
	wall, cpu, user, sys, wait time.Duration
	maxRSS                     int64 // KiB, at the end
}

func usage() rusage {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	u := rusage{wall: time.Duration(time.Now().UnixNano()), user: time.Duration(ru.Utime.Nano()), sys: time.Duration(ru.Stime.Nano())}
	u.cpu = u.user + u.sys
	u.maxRSS = ru.Maxrss
	_, u.wait = schedstat()
	return u
}

func (u rusage) sub(v rusage) rusage {
	return rusage{u.wall - v.wall, u.cpu - v.cpu, u.user - v.user, u.sys - v.sys, u.wait - v.wait, u.maxRSS}
}

// schedstat sums the process's threads' time on a CPU and time runnable
// but waiting for one (threads that ended meanwhile are missed).
// schedstat sums the process's threads' time on a CPU and time runnable
// but waiting for one (threads that ended meanwhile are missed).
func schedstat() (run, wait time.Duration) {
	ents, _ := os.ReadDir("/proc/self/task")
	for _, e := range ents {
		r, w := readSchedstat("/proc/self/task/" + e.Name() + "/schedstat")
		run += r
		wait += w
	}
	return run, wait
}

func readSchedstat(path string) (run, wait time.Duration) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0
	}
	r, _ := strconv.ParseInt(f[0], 10, 64)
	w, _ := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(r), time.Duration(w)
}

func twoNodes() (*mesh.Node, *mesh.Node, error) {
	var nodes []*mesh.Node
	for i := range 2 {
		key, err := mesh.GenerateKey()
		if err != nil {
			return nil, nil, err
		}
		cfg := mesh.Config{Key: key, Addr: netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i+1)), RTTInterval: time.Hour}
		tr.wrap(&cfg, i)
		n, err := mesh.New(cfg)
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
func throughput(p path, dur time.Duration) (float64, string, error) {
	l, err := p.listen()
	if err != nil {
		return 0, "", err
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
		return 0, "", err
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	c.SetWriteDeadline(start.Add(dur))
	for {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	info := tcpInfo(c)
	c.Close()
	n := <-got
	return float64(n) / 1e6 / time.Since(start).Seconds(), info, nil
}

// tcpInfo says what held the sending TCP back: the kernel's time with data
// in flight (busy) and how much of it the receiver's window or the send
// buffer limited; the rest of busy is the congestion window's. Empty for
// netstack's connections.
func tcpInfo(c net.Conn) string {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return ""
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return ""
	}
	var ti *unix.TCPInfo
	rc.Control(func(fd uintptr) { ti, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil || ti == nil {
		return ""
	}
	us := func(v uint64) time.Duration { return time.Duration(v) * time.Microsecond }
	return fmt.Sprintf("sending TCP: smoothed rtt %v, cwnd %d segments of %d bytes; data in flight %v of it, limited by the receive window %v, by the send buffer %v",
		time.Duration(ti.Rtt)*time.Microsecond, ti.Snd_cwnd, ti.Snd_mss, us(ti.Busy_time).Round(time.Millisecond), us(ti.Rwnd_limited).Round(time.Millisecond), us(ti.Sndbuf_limited).Round(time.Millisecond))
}

// pingPong times count one-byte round trips; mesh says to trace them.
func pingPong(p path, count int, mesh bool) (time.Duration, error) {
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
	if mesh {
		tr.start()
		defer tr.stop()
	}
	for range count {
		start := time.Now()
		tr.add(appWrite, -1)
		if _, err := c.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		tr.add(appRead, -1)
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
// namespaces, WireGuard's UDP over that veth pair. mtu, if not 0, is the
// mesh's MTU, and the veth's is mtu+80.
func runTUN(dur time.Duration, pings int, cpuprofile string, mtu int) error {
	pair, err := meshtest.NewPair()
	if err != nil {
		return err
	}
	defer pair.Close()
	if mtu != 0 {
		if err := pair.SetMTU(mtu + 80); err != nil {
			return err
		}
	}
	var nodes [2]*mesh.Node
	for i := range nodes {
		key, err := mesh.GenerateKey()
		if err != nil {
			return err
		}
		cfg := mesh.Config{Key: key, Addr: netip.MustParseAddr(fmt.Sprintf("fdaa::%d", i+1)), TUN: "perchmesh", MTU: mtu, RTTInterval: time.Hour}
		tr.wrap(&cfg, i)
		err = pair.In(i, func() error {
			nodes[i], err = mesh.New(cfg)
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
	res, err := measure(paths, dur, pings, cpuprofile, func() func() {
		before := pairCounters(pair)
		return func() { printCounters(pairCounters(pair), before) }
	})
	if err != nil {
		return err
	}
	if mtu == 0 {
		mtu = mesh.MTU
	}
	return printCrypto(mtu, res[0])
}

// counters is one namespace's kernel counters (/proc/net/snmp, netstat)
// and its veth's packet counts.
type counters map[string]int64

func pairCounters(p *meshtest.Pair) [2]counters {
	var out [2]counters
	for i := range 2 {
		p.In(i, func() error {
			out[i] = readCounters()
			if l, err := netlink.LinkByName(p.Link[i]); err == nil && l.Attrs().Statistics != nil {
				out[i]["vethTxPackets"] = int64(l.Attrs().Statistics.TxPackets)
				out[i]["vethRxPackets"] = int64(l.Attrs().Statistics.RxPackets)
			}
			return nil
		})
	}
	return out
}

// printCounters says, for the mesh's throughput phase, how many packets
// each layer handled (the offloads' batching) and what was lost.
func printCounters(after, before [2]counters) {
	d := func(i int, k string) int64 { return after[i][k] - before[i][k] }
	per := func(a, b int64) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	seg, pkts := d(0, "TcpOutSegs"), d(0, "Ip6OutRequests")
	// A UDP GSO send crosses the veth as one packet (veth keeps the
	// offload): UdpOutDatagrams counts sends, not WireGuard packets.
	fmt.Printf("  sender: %d TCP segments in %d packets read from the TUN device (%.1f each: TSO); %d UDP sends (%.1f WireGuard packets each: UDP GSO), %d veth packets\n",
		seg, pkts, per(seg, pkts), d(0, "UdpOutDatagrams"), per(seg, d(0, "UdpOutDatagrams")), d(0, "vethTxPackets"))
	rpk := d(1, "Ip6InReceives")
	fmt.Printf("  receiver: %d UDP receives (%.1f WireGuard packets each: UDP GRO); %d packets written to the TUN device reach TCP (%.1f segments each: GRO)\n",
		d(1, "UdpInDatagrams"), per(seg, d(1, "UdpInDatagrams")), rpk, per(seg, rpk))
	var lost []string
	for i := range 2 {
		for _, k := range []string{"TcpRetransSegs", "UdpRcvbufErrors", "UdpSndbufErrors", "UdpInErrors", "Ip6InDiscards", "Ip6OutDiscards", "TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop", "TcpExtTCPOFOQueue"} {
			if v := d(i, k); v != 0 {
				lost = append(lost, fmt.Sprintf("%s %s=%d", []string{"sender", "receiver"}[i], k, v))
			}
		}
	}
	if len(lost) == 0 {
		lost = []string{"none"}
	}
	fmt.Printf("  retransmits, drops: %s\n", strings.Join(lost, ", "))
}

// readCounters reads the calling thread's namespace's SNMP counters.
func readCounters() counters {
	out := counters{}
	for _, f := range []string{"/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat", "/proc/thread-self/net/snmp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		if strings.HasSuffix(f, "snmp6") {
			for _, l := range lines {
				if fs := strings.Fields(l); len(fs) == 2 {
					out[fs[0]], _ = strconv.ParseInt(fs[1], 10, 64)
				}
			}
			continue
		}
		// Pairs of lines: "Tcp: name name…", "Tcp: value value…".
		for i := 0; i+1 < len(lines); i += 2 {
			h, v := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(h) != len(v) || len(h) == 0 {
				continue
			}
			pre := strings.TrimSuffix(h[0], ":")
			for j := 1; j < len(h); j++ {
				out[pre+h[j]], _ = strconv.ParseInt(v[j], 10, 64)
			}
		}
	}
	return out
}

// cryptoCeiling measures what WireGuard's cipher alone costs: one
// goroutine sealing and then opening mtu-sized packets for d each, in
// CPU time of its thread (so other work on the machine does not count).
// It returns the rate at which one core seals and opens every byte.
func cryptoCeiling(mtu int, d time.Duration) (sealMBps, openMBps, bothMBps float64, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	key := make([]byte, chacha20poly1305.KeySize)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return 0, 0, 0, err
	}
	plain := make([]byte, mtu)
	sealed := aead.Seal(nil, make([]byte, 12), plain, nil)
	out := make([]byte, 0, len(sealed))
	nonce := make([]byte, 12)
	threadCPU := func() time.Duration {
		run, _ := readSchedstat("/proc/thread-self/schedstat")
		return run
	}
	rate := func(f func()) float64 {
		c0, w0, n := threadCPU(), time.Now(), 0
		for time.Since(w0) < d {
			for range 64 {
				f()
			}
			n += 64
		}
		return float64(n*mtu) / 1e6 / (threadCPU() - c0).Seconds()
	}
	sealMBps = rate(func() { out = aead.Seal(out[:0], nonce, plain, nil) })
	openMBps = rate(func() {
		if _, e := aead.Open(out[:0], nonce, sealed, nil); e != nil {
			err = e
		}
	})
	return sealMBps, openMBps, 1 / (1/sealMBps + 1/openMBps), err
}
