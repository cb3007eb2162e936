// Command edge benchmarks Perch's edge proxy against nginx and Caddy in one
// run: wrk drives (a) the app directly, (b) the Perch edge, (c) nginx and
// (d) Caddy, the three proxies configured as plain reverse proxies to the
// same backend (the sample app), for keep-alive connections and for a new
// connection per request. Run it with bench/edge/run.sh, which records the
// output in bench/README.md.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/edge"
	"github.com/perchhq/perch/internal/store"
)

const host = "bench.perch.local"

type target struct {
	name   string
	url    string
	tlsURL string       // "" when the target has no TLS port
	pids   func() []int // the proxy's processes, for its CPU time; nil: not measured
}

type result struct {
	rps      float64
	p50, p99 time.Duration
}

func main() {
	dur := flag.Duration("d", 10*time.Second, "wrk duration per run")
	conns := flag.Int("c", 50, "concurrent connections")
	threads := flag.Int("t", 2, "wrk threads")
	app := flag.String("app", "bin/hello", "backend binary (examples/hello)")
	caddy := flag.String("caddy", "caddy", "caddy binary")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the Perch edge (net/http path) over the whole run here")
	cpuprofileFast := flag.String("cpuprofile-fast", "", "write a CPU profile of the Perch edge on the HTTP/1.1 fast path over the whole run here")
	http1 := flag.String("http1", "std", "internal: the edge's HTTP/1 mode for -role edge (fast or std)")
	idle := flag.Int("idle", 0, "instead of wrk: hold this many idle keep-alive connections to each proxy and report its memory (idle.go)")
	idleTLS := flag.Bool("idle-tls", false, "with -idle: the connections are TLS")
	role := flag.String("role", "", "internal: run as the edge (\"edge\") or the bare proxy (\"bare\") in a child process")
	backendFlag := flag.String("backend", "", "internal: the backend address for -role")
	listenFlag := flag.String("listen", "", "internal: the listen address for -role")
	tlsListen := flag.String("tls-listen", "", "internal: the TLS listen address for -role edge")
	certFlag := flag.String("cert", "", "internal: certificate file for -role edge")
	keyFlag := flag.String("key", "", "internal: key file for -role edge")
	fastEnv := flag.String("fast-env", "", "environment of the fast-path edge process (not base), e.g. \"GOGC=400 GOMAXPROCS=1\" (to measure runtime settings)")
	baseBin := flag.String("base-bin", "", "also run the fast-path edge of this benchedge binary (built from an earlier tree) as target \"base\", to compare a change in one run")
	modes := flag.String("modes", "", "run only these modes (comma-separated: keep, close, tls, tlsclose; default all)")
	only := flag.String("only", "", "run wrk only against these targets (comma-separated: app, std, fast, base, bare, nginx, caddy; default all)")
	flag.Parse()
	// Each proxy runs in its own process, as nginx and Caddy do, so that
	// none shares a Go runtime (scheduler, GC) with this driver.
	switch *role {
	case "edge":
		dir, _ := os.MkdirTemp("", "perch-bench-edge-role-")
		defer os.RemoveAll(dir)
		stop := runEdge(dir, *backendFlag, *listenFlag, *tlsListen, *certFlag, *keyFlag, *cpuprofile, edge.HTTP1Mode(*http1))
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		stop()
		return
	case "bare":
		serveBare(*listenFlag, *backendFlag)
		return
	}
	dir, _ := os.MkdirTemp("", "perch-bench-edge-")
	defer os.RemoveAll(dir)

	backend := freeAddr("127.0.0.1")
	stop := start(*app, nil, "PORT="+port(backend)+" PERCH_REGION=bench")
	defer stop()
	waitListen(backend)

	certFile, keyFile := writeCert(dir)
	self, _ := os.Executable()
	perch, perchTLS := freeAddr("127.0.0.2"), freeAddr("127.0.0.2")
	stopEdge, edgePID := startPID(self, "", "-role", "edge", "-backend", backend, "-listen", perch, "-tls-listen", perchTLS,
		"-cert", certFile, "-key", keyFile, "-cpuprofile", *cpuprofile)
	defer stopEdge()
	waitListen(perch)
	// The same edge on its HTTP/1.1 fast path (perch agent --http1=fast).
	fast, fastTLS := freeAddr("127.0.0.6"), freeAddr("127.0.0.6")
	stopFast, fastPID := startPID(self, *fastEnv, "-role", "edge", "-http1", "fast", "-backend", backend, "-listen", fast, "-tls-listen", fastTLS,
		"-cert", certFile, "-key", keyFile, "-cpuprofile", *cpuprofileFast)
	defer stopFast()
	waitListen(fast)

	nginx, nginxTLS := freeAddr("127.0.0.3"), freeAddr("127.0.0.3")
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`worker_processes auto; worker_rlimit_nofile 20000; daemon off; pid %s/nginx.pid; error_log stderr error;
events { worker_connections 16384; }
http { access_log off;
  upstream app { server %s; keepalive 128; }
  server { listen %s; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; } }
  server { listen %s ssl http2; ssl_certificate %s; ssl_certificate_key %s; ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $host; } } }
`, dir, backend, nginx, nginxTLS, certFile, keyFile)), 0o644)
	stopNginx, nginxPID := startPID("nginx", "", "-c", conf, "-p", dir)
	defer stopNginx()
	waitListen(nginx)

	caddyAddr, caddyTLS := freeAddr("127.0.0.4"), freeAddr("127.0.0.4")
	cf := filepath.Join(dir, "Caddyfile")
	// Any Host (wrk sends the app's name): a site address naming the IP
	// would match only that Host, and Caddy answers others with an empty 200.
	os.WriteFile(cf, []byte(fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\nhttp://:%s {\n\tbind %s\n\treverse_proxy %s\n}\nhttps://:%s {\n\tbind %s\n\ttls %s %s\n\treverse_proxy %s\n}\n",
		port(caddyAddr), host4(caddyAddr), backend, port(caddyTLS), host4(caddyTLS), certFile, keyFile, backend)), 0o644)
	stopCaddy, caddyPID := startPID(*caddy, "", "run", "--config", cf, "--adapter", "caddyfile")
	defer stopCaddy()
	waitListen(caddyAddr)
	waitListen(caddyTLS)
	waitListen(perchTLS)
	waitListen(nginxTLS)

	// A bare httputil.ReverseProxy in this same process: what the Go
	// standard library costs here, to tell the edge's own overhead apart.
	bare := freeAddr("127.0.0.5")
	stopBare := start(self, nil, "", "-role", "bare", "-backend", backend, "-listen", bare)
	defer stopBare()
	waitListen(bare)

	targets := []target{
		{"app directly", "http://" + backend + "/", "", nil},
		{"perch edge", "http://" + perch + "/", "https://" + perchTLS + "/", withChildren(edgePID)},
		{"perch edge, fast path", "http://" + fast + "/", "https://" + fastTLS + "/", withChildren(fastPID)},
		{"bare Go ReverseProxy", "http://" + bare + "/", "", nil},
		{"nginx", "http://" + nginx + "/", "https://" + nginxTLS + "/", withChildren(nginxPID)},
		{"caddy", "http://" + caddyAddr + "/", "https://" + caddyTLS + "/", withChildren(caddyPID)},
	}
	short := []string{"app", "std", "fast", "bare", "nginx", "caddy"}
	if *baseBin != "" {
		base, baseTLS := freeAddr("127.0.0.7"), freeAddr("127.0.0.7")
		stopBase, basePID := startPID(*baseBin, "", "-role", "edge", "-http1", "fast", "-backend", backend, "-listen", base, "-tls-listen", baseTLS,
			"-cert", certFile, "-key", keyFile)
		defer stopBase()
		waitListen(base)
		waitListen(baseTLS)
		targets = append(targets[:3], append([]target{{"perch edge, fast path (base)", "http://" + base + "/", "https://" + baseTLS + "/", withChildren(basePID)}}, targets[3:]...)...)
		short = []string{"app", "std", "fast", "base", "bare", "nginx", "caddy"}
	}
	if *only != "" {
		want := map[string]bool{"app": true} // the reference for added latency
		for _, n := range strings.Split(*only, ",") {
			if !slices.Contains(short, n) {
				log.Fatalf("-only: unknown target %q: use %s", n, strings.Join(short, ", "))
			}
			want[n] = true
		}
		var kept []target
		for i, t := range targets {
			if want[short[i]] {
				kept = append(kept, t)
			}
		}
		targets = kept
	}
	// Every target must really reach the app, or its numbers mean nothing.
	for _, t := range targets {
		for _, u := range []string{t.url, t.tlsURL} {
			if u == "" {
				continue
			}
			if body := get(u); !strings.Contains(body, "hello from bench") {
				log.Fatalf("%s (%s) does not proxy to the app: it answered %q", t.name, u, body)
			}
		}
	}
	if *idle > 0 {
		runIdle(*idle, *idleTLS, []idleProxy{
			{"perch edge", perch, perchTLS, withChildren(edgePID)},
			{"perch edge, fast path", fast, fastTLS, withChildren(fastPID)},
			{"nginx", nginx, nginxTLS, withChildren(nginxPID)},
			{"caddy", caddyAddr, caddyTLS, withChildren(caddyPID)},
		})
		return
	}
	fmt.Printf("wrk -t%d -c%d -d%s --latency -H 'Host: %s' URL   (2 cores shared by wrk, proxy and backend)\n\n", *threads, *conns, *dur, host)
	for _, mode := range []struct {
		short string
		name  string
		tls   bool
		extra []string
	}{
		{"keep", "keep-alive", false, nil},
		{"close", "new connection per request", false, []string{"-H", "Connection: close"}},
		{"tls", "TLS, keep-alive (added latency against the plain app)", true, nil},
		{"tlsclose", "TLS, new connection (and handshake) per request", true, []string{"-H", "Connection: close"}},
	} {
		if *modes != "" && !slices.Contains(strings.Split(*modes, ","), mode.short) {
			continue
		}
		fmt.Printf("## %s\n\n| target | requests/s | p50 | p99 | added p50 | added p99 | proxy CPU µs/request |\n|---|---|---|---|---|---|---|\n", mode.name)
		var direct result
		res := map[string]result{}
		for i, t := range targets {
			u := t.url
			if mode.tls && i > 0 {
				if u = t.tlsURL; u == "" {
					continue
				}
			}
			var cpu0 time.Duration
			if t.pids != nil {
				cpu0 = cpuTime(t.pids())
			}
			r := wrk(u, *threads, *conns, *dur, mode.extra)
			res[t.name] = r
			perReq := ""
			if t.pids != nil && r.rps > 0 {
				used := cpuTime(t.pids()) - cpu0
				perReq = fmt.Sprintf("%.1f", float64(used.Microseconds())/(r.rps*dur.Seconds()))
			}
			if i == 0 {
				direct = r
				fmt.Printf("| %s | %.0f | %s | %s | | | |\n", t.name, r.rps, r.p50, r.p99)
				continue
			}
			fmt.Printf("| %s | %.0f | %s | %s | %s | %s | %s |\n", t.name, r.rps, r.p50, r.p99, r.p50-direct.p50, r.p99-direct.p99, perReq)
		}
		p, f, n, c := res["perch edge"], res["perch edge, fast path"], res["nginx"], res["caddy"]
		fmt.Printf("\nperch / nginx requests/s: %.2f; perch / caddy: %.2f; fast path / nginx: %.2f; fast path / caddy: %.2f", p.rps/n.rps, p.rps/c.rps, f.rps/n.rps, f.rps/c.rps)
		if b, ok := res["perch edge, fast path (base)"]; ok {
			fmt.Printf("; fast path / base: %.2f; base / nginx: %.2f", f.rps/b.rps, b.rps/n.rps)
		}
		fmt.Printf("\n\n")
	}
}

// runEdge runs the Perch edge in this process, fed from an embedded NATS
// holding one app with one started machine: the backend.
func runEdge(dir, backend, listen, tlsListen, certFile, keyFile, cpuprofile string, http1 edge.HTTP1Mode) func() {
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	nats, err := store.RunEmbedded(filepath.Join(dir, "nats"), "127.0.0.1:0", "t", slog.New(slog.DiscardHandler))
	if err != nil {
		log.Fatal(err)
	}
	st, err := store.Open(ctx, nats.URL(), "t", "bench")
	if err != nil {
		log.Fatal(err)
	}
	bport, _ := strconv.Atoi(port(backend))
	lport, _ := strconv.Atoi(port(listen))
	tport, _ := strconv.Atoi(port(tlsListen))
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		log.Fatal(err)
	}
	now := time.Now()
	must(store.Put(ctx, st.Apps, "bench", api.App{Name: "bench", CreatedAt: now}))
	must(store.Put(ctx, st.Hosts, "h1", api.Host{ID: "h1", Region: "iad", Status: api.HostUp, LastSeen: now}))
	spec := store.MachineSpec{ID: "m1", App: "bench", Region: "iad", HostID: "h1", PrivateIP: "127.0.0.1",
		Desired: store.DesireStarted, Generation: 1, ConfigGeneration: 1,
		Config: api.MachineConfig{Image: "bench", Services: []api.Service{{Protocol: "tcp", InternalPort: bport,
			Ports: []api.Port{{Port: lport, Handlers: []string{"http"}}, {Port: tport, Handlers: []string{"tls", "http"}}}}}}}
	must(store.Put(ctx, st.Machines, spec.Key(), spec))
	must(store.Put(ctx, st.Status, spec.Key(), store.MachineStatus{ID: "m1", App: "bench", HostID: "h1", State: api.StateStarted, Ready: true, Generation: 1}))
	e, err := edge.New(edge.Config{Region: "iad", HostID: "h1", Addr: netip.MustParseAddr(host4(listen)), Store: st, Certs: staticCert{&cert}, HTTP1: http1})
	if err != nil {
		log.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	return func() { cancel(); <-done; st.Close(); nats.Shutdown(); pprof.StopCPUProfile() }
}

var insecure = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}

func get(u string) string {
	req, _ := http.NewRequest("GET", u, nil)
	req.Host = host
	res, err := insecure.Do(req)
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	b := make([]byte, 200)
	n, _ := res.Body.Read(b)
	return string(b[:n])
}

func serveBare(addr, backend string) {
	u, _ := url.Parse("http://" + backend)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{MaxIdleConnsPerHost: 128}
	rp.ErrorLog = log.New(io.Discard, "", 0) // wrk hangs up mid-request at the end of a run
	log.Fatal(http.ListenAndServe(addr, rp))
}

// staticCert serves one certificate for every name, as nginx and Caddy are
// configured here.
type staticCert struct{ c *tls.Certificate }

func (s staticCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.c, nil }
func (s staticCert) HTTPChallenge(next http.Handler) http.Handler                  { return next }

// writeCert writes a self-signed ECDSA certificate for the bench's host.
func writeCert(dir string) (string, string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}

func must(_ uint64, err error) {
	if err != nil {
		log.Fatal(err)
	}
}

var (
	reRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reP   = regexp.MustCompile(`^\s+(50|99)%\s+([0-9.]+)(us|ms|s)`)
)

func wrk(url string, threads, conns int, d time.Duration, extra []string) result {
	args := append([]string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Seconds())) + "s", "--latency", "-H", "Host: " + host}, extra...)
	args = append(args, url)
	out, err := exec.Command("wrk", args...).CombinedOutput()
	if err != nil {
		log.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	var r result
	if m := reRPS.FindSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(string(m[1]), 64)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		m := reP.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[3]]
		d := time.Duration(v * float64(unit)).Round(time.Microsecond)
		if m[1] == "50" {
			r.p50 = d
		} else {
			r.p99 = d
		}
	}
	if strings.Contains(string(out), "Non-2xx") {
		log.Fatalf("wrk %s got errors:\n%s", url, out)
	}
	return r
}

func start(bin string, _ []string, env string, args ...string) func() {
	stop, _ := startPID(bin, env, args...)
	return stop
}

// startPID starts bin like start and also returns its pid.
func startPID(bin string, env string, args ...string) (func(), int) {
	cmd := exec.Command(bin, args...)
	if env != "" {
		cmd.Env = append(os.Environ(), strings.Fields(env)...)
	}
	cmd.Stderr = os.Stderr
	// Children die with this process, even when it stops on log.Fatal.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Fatalf("start %s: %v", bin, err)
	}
	return func() {
		// SIGTERM lets nginx stop its workers too.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}, cmd.Process.Pid
}

// freeAddr is a free port on ip below the kernel's ephemeral range and
// free on every address (the backend binds them all), so that no client
// connection of this or an earlier run holds it as its own port.
func freeAddr(ip string) string {
	for range 1000 {
		port := strconv.Itoa(20000 + mrand.IntN(12000))
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			continue
		}
		ln.Close()
		return net.JoinHostPort(ip, port)
	}
	log.Fatal("no free port between 20000 and 32000")
	return ""
}

func port(addr string) string  { _, p, _ := net.SplitHostPort(addr); return p }
func host4(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }

func waitListen(addr string) {
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	log.Fatalf("nothing listens on %s", addr)
}

// cpuTime is the user and system CPU time the processes used so far
// (/proc/PID/stat, in clock ticks of 10 ms).
func cpuTime(pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			k, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + k
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
