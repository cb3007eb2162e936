// Command foundation measures the foundation's two numbers on this machine:
// the time from `perch deploy` until every region's edge answers from the
// new release, and a machine's start time through the agent against `runc
// run` of the same bundle directly. It needs root. Run it with
// bench/run.sh, which records the output in bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/bench/internal/benchworld"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	rounds := flag.Int("n", 10, "rounds of each measurement")
	regions := flag.String("regions", "iad,ams,sin", "regions of the world")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, network namespaces)")
	}
	ctx := context.Background()
	w, err := benchworld.Start(ctx, *perch, strings.Split(*regions, ","))
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	info := w.Info()
	ref, err := w.PushHello("bench")
	if err != nil {
		log.Fatal(err)
	}
	app, err := w.AppDir("bench")
	if err != nil {
		log.Fatal(err)
	}
	run(w, app, "launch", "--image", ref, "--regions", *regions, "--name", "bench")

	fmt.Printf("machine: %s, %d CPUs; regions %s; %d rounds\n\n", hostname(), nproc(), *regions, *rounds)
	var deploys []time.Duration
	for i := 0; i < *rounds; i++ {
		deploys = append(deploys, timeDeploy(w, app))
	}
	fmt.Printf("deploy to every machine answering (%d regions, one machine each, rolling one region at a time)\n", len(info.Regions))
	fmt.Printf("  first (cold image cache): %s\n", round(deploys[0]))
	fmt.Printf("  later: median %s, min %s, max %s\n\n", round(median(deploys[1:])), round(slices.Min(deploys[1:])), round(slices.Max(deploys[1:])))

	agentT, runcT := startTimes(ctx, w.World, *rounds)
	ma, mr := median(agentT), median(runcT)
	fmt.Printf("machine start to first HTTP answer on its private address (same bundle)\n")
	fmt.Printf("  through the agent (API start -> NATS -> agent -> shim -> runc): median %s (min %s, max %s)\n", round(ma), round(slices.Min(agentT)), round(slices.Max(agentT)))
	fmt.Printf("  runc run -d directly:                                     median %s (min %s, max %s)\n", round(mr), round(slices.Min(runcT)), round(slices.Max(runcT)))
	fmt.Printf("  ratio agent / runc: %.2f\n", float64(ma)/float64(mr))
}

func run(w *benchworld.World, dir string, args ...string) string {
	out, err := w.Perch(dir, args...)
	if err != nil {
		log.Fatal(err)
	}
	return out
}

// timeDeploy runs `perch deploy` and waits until each region's edge answers
// from a machine of the new release.
func timeDeploy(w *benchworld.World, app string) time.Duration {
	info := w.Info()
	before := machineIDs(w.World)
	t0 := time.Now()
	run(w, app, "deploy")
	for _, r := range info.Regions {
		for {
			body := getBody("http://"+r.EdgeAddr+"/", "bench.perch.local")
			if strings.Contains(body, "hello from "+r.Code) && !containsAny(body, before) {
				break
			}
			if time.Since(t0) > 2*time.Minute {
				log.Fatalf("%s never answered from the new release: %q", r.Code, body)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return time.Since(t0)
}

func machineIDs(w *devcluster.World) []string {
	ms, err := w.Client().ListMachines(context.Background(), "bench", "")
	if err != nil {
		log.Fatal(err)
	}
	var ids []string
	for _, m := range ms {
		ids = append(ids, m.ID)
	}
	return ids
}

func containsAny(s string, subs []string) bool {
	for _, x := range subs {
		if strings.Contains(s, x) {
			return true
		}
	}
	return false
}

var client = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func getBody(url, host string) string {
	req, _ := http.NewRequest("GET", url, nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	if resp.StatusCode != 200 {
		return ""
	}
	return string(b[:n])
}

// startTimes alternates starting one stopped machine through the API and
// running a copy of its bundle with runc directly, timing each until the
// app answers on the machine's address.
func startTimes(ctx context.Context, w *devcluster.World, rounds int) (agentT, runcT []time.Duration) {
	c := w.Client()
	info := w.Info()
	ms, _ := c.ListMachines(ctx, "bench", info.Regions[0].Code)
	// The last deploy's old machine may still be being destroyed.
	i := slices.IndexFunc(ms, func(m api.Machine) bool { return m.State == api.StateStarted })
	if i < 0 {
		log.Fatalf("no started machine in %s", info.Regions[0].Code)
	}
	m := ms[i]
	url := "http://" + m.PrivateIP + ":8080/"
	bundle := filepath.Join(info.Regions[0].StateDir, "runc", "machines", m.ID)
	direct, err := benchworld.NewDirectRunc(bundle)
	if err != nil {
		log.Fatal(err)
	}
	defer direct.Close()
	stop := func() {
		if err := c.StopMachine(ctx, "bench", m.ID, nil); err != nil {
			log.Fatal(err)
		}
		if err := c.WaitMachine(ctx, "bench", m.ID, api.StateStopped, 60*time.Second); err != nil {
			log.Fatal(err)
		}
	}
	stop()
	for i := 0; i < rounds; i++ {
		t0 := time.Now()
		if err := c.StartMachine(ctx, "bench", m.ID); err != nil {
			log.Fatal(err)
		}
		if err := benchworld.WaitHTTP(url, "", t0); err != nil {
			log.Fatal(err)
		}
		agentT = append(agentT, time.Since(t0))
		stop()

		d, err := direct.Run(url)
		if err != nil {
			log.Fatal(err)
		}
		runcT = append(runcT, d)
		direct.Delete()
	}
	return agentT, runcT
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func round(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }

func hostname() string { h, _ := os.Hostname(); return h }

func nproc() int {
	out, _ := exec.Command("nproc").Output()
	var n int
	fmt.Sscan(string(out), &n)
	return n
}
