// Command turboku measures the Turboku launch post's claim ("typical
// Heroku apps are 800ms faster"): in a dev world with simulated fiber
// latency between regions (17 or more), a Heroku app's slug moved with
// perch launch --from-heroku runs first only in iad (where Heroku's us
// region is; a client in each city reaches it across the simulated fiber
// from its city to iad, as it would reach Heroku's router), then in every
// region (a client reaches its own city's edge). For each city it times a
// fresh HTTPS request (TCP + TLS 1.3 + GET to the first byte of the answer,
// a browser's first visit) and a keep-alive request, and reports the
// median saving in milliseconds against 800 ms. Run as root from the
// repository root:
//
//	go build -o bin/perch ./cmd/perch && go run ./bench/turboku -perch bin/perch
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/perchhq/perch/bench/internal/accessnet"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/heroku/herokutest"
	"github.com/perchhq/perch/internal/testimage"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("turboku: ")
	perch := flag.String("perch", "bin/perch", "the perch binary (agents and the CLI)")
	n := flag.Int("n", 10, "requests per city and kind, after a first one")
	nRegions := flag.Int("regions", 0, "regions of the world: iad and the n-1 farthest-spread others of regions.tsv (0: all)")
	inflation := flag.Float64("inflation", 1.5, "fiber route inflation of the simulated latency")
	access := flag.Duration("access", time.Millisecond, "one-way latency between a client and its city's edge")
	out := flag.String("out", "bench/turboku/results.md", "where to write the results")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, network namespaces)")
	}
	bin, err := filepath.Abs(*perch)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(bin, *n, *nRegions, *inflation, *access, *out); err != nil {
		log.Fatal(err)
	}
}

func run(perch string, n, nRegions int, inflation float64, access time.Duration, out string) error {
	ctx := context.Background()
	world := geo.Default()
	regions := world.Codes()
	if nRegions > 0 && nRegions < len(regions) {
		rest := slices.DeleteFunc(slices.Clone(regions), func(r string) bool { return r == "iad" })
		// Spread over the world: every k-th of those ordered by distance from iad.
		rest = world.Nearest("iad", rest)
		var pick []string
		for i := 0; len(pick) < nRegions-1; i++ {
			pick = append(pick, rest[(i*len(rest))/(nRegions-1)])
		}
		regions = append([]string{"iad"}, pick...)
	}
	work, err := os.MkdirTemp("", "perch-turboku-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	log.Printf("building the stack stand-in (Debian with python3 and bash, cached) and the app")
	base, err := testimage.Debian(ctx, testimage.Gunicorn())
	if err != nil {
		return err
	}
	stack, err := withHerokuUser(base)
	if err != nil {
		return err
	}
	hello := filepath.Join(work, "hello")
	build := exec.Command("go", "build", "-trimpath", "-o", hello, "./examples/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build examples/hello: %v\n%s", err, b)
	}
	helloBin, err := os.ReadFile(hello)
	if err != nil {
		return err
	}

	log.Printf("starting a world of %d regions with simulated latency (inflation %.1f)", len(regions), inflation)
	t0 := time.Now()
	w, err := devcluster.Start(ctx, devcluster.Options{
		Dir: filepath.Join(work, "world"), Regions: regions, APIListen: "127.0.0.1:0",
		EdgeBase: netip.MustParseAddr("127.0.11.1"), PerchBin: perch, Latency: inflation,
	})
	if err != nil {
		return fmt.Errorf("dev world: %w", err)
	}
	defer w.Close()
	info := w.Info()
	log.Printf("world up in %v", time.Since(t0).Round(time.Second))
	if err := testimage.Push(ctx, stack, info.Registry+"/heroku/heroku:24", info.Token); err != nil {
		return err
	}

	h := herokutest.New("bench")
	defer h.Close()
	h.AddApp(herokutest.App{Name: "shop", Region: "us", Stack: "heroku-24",
		ConfigVars: map[string]string{"GREETING": "hi"},
		Formation:  []herokutest.Formation{{Type: "web", Command: "bin/hello", Quantity: 1}}})
	h.Release("shop", herokutest.Slug{Tgz: herokutest.MakeSlug(map[string]string{"Procfile": "web: bin/hello\n", "bin/hello": string(helloBin)}),
		ProcessTypes: map[string]string{"web": "bin/hello"}}, "Deploy")

	dir := filepath.Join(work, "app")
	os.MkdirAll(dir, 0o755)
	cli := func(args ...string) error {
		cmd := exec.Command(perch, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "PERCH_API_URL="+info.APIURL, "PERCH_API_TOKEN="+info.Token, "HOME="+dir, "XDG_CONFIG_HOME="+dir+"/.config", "HEROKU_API_KEY=bench")
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("perch %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return nil
	}
	log.Printf("perch launch --from-heroku shop (iad only, as on Heroku's us region)")
	if err := cli("launch", "--from-heroku", "shop", "--heroku-api", h.URL, "--smoke-window", "0s"); err != nil {
		return err
	}
	iad := info.Regions[0]
	if err := waitServed(iad.EdgeAddr, "iad", time.Minute); err != nil {
		return err
	}
	load0 := loadAvg()
	var before, after []result
	for _, r := range info.Regions {
		// As a client of Heroku in r's city: across the fiber to iad.
		oneWay := access + world.FiberRTT(r.Code, "iad", inflation)/2
		res, err := measure(iad.EdgeAddr, oneWay, n)
		if err != nil {
			return fmt.Errorf("%s (via iad): %w", r.Code, err)
		}
		res.region, res.oneWay = r.Code, oneWay
		log.Printf("before %-4s fresh %7.1f ms  keep-alive %7.1f ms  (answered from %s)", r.Code, res.fresh, res.warm, res.from)
		before = append(before, res)
	}
	load1 := loadAvg()

	others := slices.DeleteFunc(slices.Clone(regions), func(r string) bool { return r == "iad" })
	log.Printf("perch scale count 1 in %d more regions", len(others))
	if err := cli("scale", "count", "1", "--region", strings.Join(others, ","), "--yes"); err != nil {
		return err
	}
	for _, r := range info.Regions {
		if err := waitServed(r.EdgeAddr, r.Code, 2*time.Minute); err != nil {
			return err
		}
	}
	load2 := loadAvg()
	for _, r := range info.Regions {
		res, err := measure(r.EdgeAddr, access, n)
		if err != nil {
			return fmt.Errorf("%s (own edge): %w", r.Code, err)
		}
		res.region, res.oneWay = r.Code, access
		log.Printf("after  %-4s fresh %7.1f ms  keep-alive %7.1f ms  (answered from %s)", r.Code, res.fresh, res.warm, res.from)
		after = append(after, res)
	}
	load3 := loadAvg()
	report := render(world, regions, before, after, n, inflation, access, [4]string{load0, load1, load2, load3})
	fmt.Print(report)
	return os.WriteFile(out, []byte(report), 0o644)
}

type result struct {
	region      string
	oneWay      time.Duration
	fresh, warm float64 // medians, ms
	from        string
}

// measure times n fresh HTTPS requests (new TCP connection, TLS 1.3
// handshake, GET, to the answer's first byte) and n keep-alive ones (one
// connection, after a first request) through the edge at addr, with
// oneWay latency between the client and the edge.
func measure(addr string, oneWay time.Duration, n int) (result, error) {
	var res result
	tlsConf := &tls.Config{ServerName: "shop.perch.local", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} // the dev CA's; trust is not what is measured
	fresh := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: accessnet.DialDelayed(oneWay), TLSClientConfig: tlsConf, DisableKeepAlives: true}}
	var fs, ws []float64
	for i := 0; i <= n; i++ {
		d, from, err := get(fresh, addr)
		if err != nil {
			return res, err
		}
		res.from = from
		if i > 0 { // the first warms the edge's connection to the machine
			fs = append(fs, d)
		}
	}
	keep := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: accessnet.DialDelayed(oneWay), TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 1}}
	for i := 0; i <= n; i++ {
		d, _, err := get(keep, addr)
		if err != nil {
			return res, err
		}
		if i > 0 {
			ws = append(ws, d)
		}
	}
	res.fresh, res.warm = median(fs), median(ws)
	return res, nil
}

// get is one request's time from its start (dial included when the
// client opens a connection) to the answer's first byte, and who answered.
func get(c *http.Client, addr string) (float64, string, error) {
	var first time.Time
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { first = time.Now() }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "https://"+addr+"/", nil)
	req.Host = "shop.perch.local"
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "hello from ") {
		return 0, "", fmt.Errorf("%s %q", resp.Status, body)
	}
	from := strings.Fields(string(body))[2]
	return float64(first.Sub(start)) / float64(time.Millisecond), from, nil
}

// waitServed waits until the edge at addr answers from region's machine.
func waitServed(addr, region string, timeout time.Duration) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(timeout)
	for {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		req.Host = "shop.perch.local"
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.HasPrefix(string(b), "hello from "+region+" ") {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the edge %s did not answer from %s within %v", addr, region, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func render(world *geo.World, regions []string, before, after []result, n int, inflation float64, access time.Duration, loads [4]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Turboku: a Heroku app in iad against the same slug in every region (issue 17)\n\n")
	fmt.Fprintf(&b, "Command: `go run ./bench/turboku -perch bin/perch -n %d -regions %d` (as root), %s.\n", n, len(regions), time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "World: %d regions, simulated fiber latency between hosts (route inflation %.1f); client to its city's edge %v one way.\n", len(regions), inflation, access)
	fmt.Fprintf(&b, "App: examples/hello as a Heroku slug (web: bin/hello), moved with `perch launch --from-heroku` onto the stack stand-in.\n")
	fmt.Fprintf(&b, "Before: only in iad; a client in each city reaches iad's edge across the simulated fiber from its city to iad (plus its access), as it would Heroku's us router.\n")
	fmt.Fprintf(&b, "After: `perch scale count 1` in every region; a client reaches its own city's edge.\n")
	fmt.Fprintf(&b, "Fresh: new TCP connection + TLS 1.3 handshake + GET, to the answer's first byte (a first visit). Keep-alive: a GET on an open TLS connection. Medians of %d, in ms.\n\n", n)
	fmt.Fprintf(&b, "| city | region | one way to iad | before: fresh | after: fresh | saved | before: keep-alive | after: keep-alive | saved |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	var savedFresh, savedWarm []float64
	for i, r := range before {
		a := after[i]
		city := r.region
		if reg, ok := world.Lookup(r.region); ok {
			city = reg.City
		}
		sf, sw := r.fresh-a.fresh, r.warm-a.warm
		savedFresh, savedWarm = append(savedFresh, sf), append(savedWarm, sw)
		fmt.Fprintf(&b, "| %s | %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", city, r.region, float64(r.oneWay)/float64(time.Millisecond), r.fresh, a.fresh, sf, r.warm, a.warm, sw)
	}
	mf, mw := median(savedFresh), median(savedWarm)
	fmt.Fprintf(&b, "\nMedian saving across %d cities: fresh HTTPS %.0f ms, keep-alive %.0f ms. The launch post says 800 ms: the fresh-request median is %.0f%% of it.\n", len(before), mf, mw, 100*mf/800)
	fmt.Fprintf(&b, "Load average (1, 5, 15 min): %s / %s before, %s / %s after (start / end).\n", loads[0], loads[1], loads[2], loads[3])
	return b.String()
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// withHerokuUser adds heroku-24's user, heroku (1001:1001), to base.
func withHerokuUser(base v1.Image) (v1.Image, error) {
	rc := mutate.Extract(base)
	defer rc.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if n := strings.TrimPrefix(h.Name, "./"); n == "etc/passwd" || n == "etc/group" {
			files[n], _ = io.ReadAll(tr)
		}
	}
	files["etc/passwd"] = append(files["etc/passwd"], "heroku:x:1001:1001::/app:/bin/bash\n"...)
	files["etc/group"] = append(files["etc/group"], "heroku:x:1001:\n"...)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range []string{"etc/group", "etc/passwd"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(files[n]))})
		tw.Write(files[n])
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(base, layer)
}
