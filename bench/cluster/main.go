// Command cluster measures the clustered control plane (issue 18): API
// write latency and throughput on one `perch server` against three
// clustered ones, and how long each leader-held job takes to move to a
// survivor when the server holding it is killed with SIGKILL. Servers run
// as processes on loopback; a write is a join token (one KV key,
// replicated to three servers in the cluster).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/server"
)

var leases = []string{"cert-renewal", "host-monitor", "autoscaler", "billing", "auto-destroy", "volume-snapshots"}

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	n := flag.Int("n", 300, "sequential writes per setup")
	conc := flag.Int("c", 8, "concurrent writers for throughput")
	dur := flag.Duration("d", 10*time.Second, "how long the throughput run lasts")
	kills := flag.Int("kills", 3, "failover rounds on the cluster")
	flag.Parse()
	host, _ := os.Hostname()
	fmt.Printf("machine: %s; %d sequential writes, %d writers for %s\n\n", host, *n, *conc, *dur)

	one := start(*perch, 1)
	measure("one server", one, *n, *conc, *dur)
	one.stop()

	three := start(*perch, 3)
	measure("three servers (R3)", three, *n, *conc, *dur)
	fmt.Println()
	for r := 1; r <= *kills; r++ {
		three.failover(r)
	}
	three.stop()
}

type cluster struct {
	bin     string
	dirs    []string
	args    [][]string
	procs   []*exec.Cmd
	apis    []string
	natsURL string
	token   string
	natsTok string
}

func start(bin string, servers int) *cluster {
	base, err := os.MkdirTemp("", "perch-bench-cluster-")
	if err != nil {
		log.Fatal(err)
	}
	c := &cluster{bin: bin}
	ports := freePorts(3 * servers)
	var peers, natss []string
	for i := range servers {
		peers = append(peers, fmt.Sprintf("127.0.0.1:%d", ports[3*i+2]))
		natss = append(natss, fmt.Sprintf("nats://127.0.0.1:%d", ports[3*i+1]))
		c.apis = append(c.apis, fmt.Sprintf("http://127.0.0.1:%d", ports[3*i]))
	}
	c.natsURL = strings.Join(natss, ",")
	seed := filepath.Join(base, "seed")
	files, err := server.InitClusterSecrets(seed)
	if err != nil {
		log.Fatal(err)
	}
	for i := range servers {
		dir := filepath.Join(base, fmt.Sprint("s", i+1))
		must(os.MkdirAll(dir, 0o700))
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(seed, f))
			must(err)
			must(os.WriteFile(filepath.Join(dir, f), b, 0o600))
		}
		args := []string{"server", "--data-dir", dir, "--no-mesh",
			"--listen", strings.TrimPrefix(c.apis[i], "http://"), "--nats-listen", strings.TrimPrefix(natss[i], "nats://")}
		if servers > 1 {
			args = append(args, "--server-name", fmt.Sprint("s", i+1), "--cluster-name", "bench",
				"--cluster-listen", peers[i], "--cluster-peers", strings.Join(peers, ","))
		}
		c.dirs, c.args = append(c.dirs, dir), append(c.args, args)
		c.procs = append(c.procs, nil)
	}
	for i := range servers {
		c.run(i)
	}
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(seed, f))
		must(err)
		return strings.TrimSpace(string(b))
	}
	c.token, c.natsTok = read("admin-token"), read("nats-token")
	for i := range servers {
		c.waitAPI(i)
	}
	return c
}

func (c *cluster) run(i int) {
	cmd := exec.Command(c.bin, c.args[i]...)
	lf, err := os.Create(filepath.Join(c.dirs[i], fmt.Sprintf("log-%d", time.Now().UnixNano())))
	must(err)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	must(cmd.Start())
	c.procs[i] = cmd
}

func (c *cluster) waitAPI(i int) {
	cl := api.NewClient(c.apis[i], c.token)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := cl.ListHosts(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log.Fatalf("server %d does not answer: %v", i+1, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *cluster) stop() {
	for _, p := range c.procs {
		if p != nil && p.ProcessState == nil {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}
	}
}

func write(ctx context.Context, cl *api.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := cl.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "iad"})
	return err
}

func measure(name string, c *cluster, n, conc int, dur time.Duration) {
	cl := api.NewClient(strings.Join(c.apis, ","), c.token)
	ctx := context.Background()
	for range 20 { // warm up
		_ = write(ctx, cl)
	}
	var lat []time.Duration
	for range n {
		t := time.Now()
		if err := write(ctx, cl); err != nil {
			log.Fatalf("%s: write: %v", name, err)
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))].Round(10 * time.Microsecond) }
	var mu sync.Mutex
	done, failed := 0, 0
	end := time.Now().Add(dur)
	var wg sync.WaitGroup
	for w := range conc {
		// Writers spread over the servers: any server takes writes.
		wcl := api.NewClient(c.apis[w%len(c.apis)], c.token)
		wg.Go(func() {
			for time.Now().Before(end) {
				err := write(ctx, wcl)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					done++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Printf("%s: write latency p50 %s, p90 %s, p99 %s, max %s; throughput %.0f writes/s with %d writers (%d failed)\n",
		name, q(0.5), q(0.9), q(0.99), lat[len(lat)-1].Round(10*time.Microsecond), float64(done)/dur.Seconds(), conc, failed)
}

func (c *cluster) holders() map[string]string {
	out := map[string]string{}
	nc, err := nats.Connect(c.natsURL, nats.UserInfo("perch", c.natsTok), nats.Timeout(3*time.Second))
	if err != nil {
		return out
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "perch_locks")
	if err != nil {
		return out
	}
	for _, l := range leases {
		if e, err := kv.Get(ctx, "lease."+l); err == nil {
			out[l], _, _ = strings.Cut(string(e.Value()), "/")
		}
	}
	return out
}

// failover kills the server holding cert-renewal and times each lease's
// move and the first write a survivor acknowledges; then the killed
// server is started again and waited for.
func (c *cluster) failover(round int) {
	var leader string
	for leader == "" {
		leader = c.holders()["cert-renewal"]
		time.Sleep(100 * time.Millisecond)
	}
	i := int(leader[1] - '1')
	before := c.holders()
	killed := time.Now()
	_ = c.procs[i].Process.Kill()
	_ = c.procs[i].Wait()
	cl := api.NewClient(strings.Join(c.apis, ","), c.token)
	var writeBack time.Duration
	go func() {
		for write(context.Background(), cl) != nil {
			time.Sleep(20 * time.Millisecond)
		}
		writeBack = time.Since(killed)
	}()
	moved := map[string]time.Duration{}
	for len(moved) < len(leases) && time.Since(killed) < 2*time.Minute {
		for l, h := range c.holders() {
			if _, ok := moved[l]; !ok && h != "" && h != leader {
				moved[l] = time.Since(killed)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	for writeBack == 0 && time.Since(killed) < 2*time.Minute {
		time.Sleep(20 * time.Millisecond)
	}
	var parts []string
	for _, l := range leases {
		if before[l] != leader {
			parts = append(parts, fmt.Sprintf("%s (on %s, not moved)", l, before[l]))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s", l, moved[l].Round(10*time.Millisecond)))
	}
	fmt.Printf("failover %d (SIGKILL %s): %s; API writes acknowledged again after %s\n", round, leader, strings.Join(parts, ", "), writeBack.Round(10*time.Millisecond))
	c.run(i)
	c.waitAPI(i)
}

func freePorts(n int) []int {
	var out []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
