// Command autostart measures issue 10's cold start through the edge: an app
// whose only machine autostop stopped (or suspended) gets a request at the
// edge, which holds it, starts the machine and answers; the time is from
// sending the request to its answer. The peer, run in the same script, is
// `runc run -d` of a copy of the same machine's bundle until the app
// answers on its private address. It needs root. Results go in
// bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/bench/internal/benchworld"
	"github.com/perchhq/perch/internal/api"
)

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	rounds := flag.Int("n", 7, "rounds of each measurement")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, network namespaces)")
	}
	ctx := context.Background()
	w, err := benchworld.Start(ctx, *perch, []string{"iad"})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	ref, err := w.PushHello("bench")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("machine: %d CPUs; one region (iad); %d rounds; sample app (examples/hello), 1 shared CPU, 256 MB\n\n", nproc(), *rounds)
	results := map[string][]time.Duration{}
	// The sample app as it is, and one that works 1 s before it listens
	// (HELLO_START_DELAY): a suspended machine skips that work.
	for _, slow := range []bool{false, true} {
		for _, mode := range []string{"stop", "suspend"} {
			app, key := "cold-"+mode, mode
			env := ""
			if slow {
				app, key, env = "slow-"+mode, "slow-"+mode, "HELLO_START_DELAY = \"1s\"\n"
			}
			m := launch(w, app, ref, mode, env)
			edge := "http://" + w.Info().Regions[0].EdgeAddr + "/"
			for range *rounds {
				waitState(ctx, w, app, m.ID, map[string]string{"stop": api.StateStopped, "suspend": api.StateSuspended}[mode])
				t0 := time.Now()
				if err := answer(edge, app+".perch.local", 40*time.Second); err != nil {
					log.Fatalf("%s: the request that should start the machine: %v", app, err)
				}
				results[key] = append(results[key], time.Since(t0))
			}
			if mode == "stop" && !slow {
				// The peer: runc run of the same bundle, while the machine is stopped.
				waitState(ctx, w, app, m.ID, api.StateStopped)
				d, err := benchworld.NewDirectRunc(filepath.Join(w.Info().Regions[0].StateDir, "runc", "machines", m.ID))
				if err != nil {
					log.Fatal(err)
				}
				for range *rounds {
					t, err := d.Run("http://" + m.PrivateIP + ":8080/")
					if err != nil {
						log.Fatal(err)
					}
					results["runc"] = append(results["runc"], t)
					d.Delete()
				}
				d.Close()
			}
		}
	}
	fmt.Println("request at the edge to its answer, the app's only machine stopped or suspended by autostop (idle 1s)")
	fmt.Printf("  stopped   (autostart: cold start through the edge): %s\n", stats(results["stop"]))
	fmt.Printf("  suspended (autostart: resume through the edge):     %s\n", stats(results["suspend"]))
	fmt.Printf("  peer: runc run -d of the same bundle to the app's first answer on its private address: %s\n", stats(results["runc"]))
	fmt.Printf("  ratio cold start through the edge / runc run: %.2f (goal <= 2)\n", ratio(results["stop"], results["runc"]))
	fmt.Printf("  ratio resume / cold start through the edge:   %.2f\n", ratio(results["suspend"], results["stop"]))
	fmt.Println("the same app working 1 s before it listens (HELLO_START_DELAY=1s)")
	fmt.Printf("  stopped:   %s\n", stats(results["slow-stop"]))
	fmt.Printf("  suspended: %s\n", stats(results["slow-suspend"]))
	fmt.Printf("  ratio resume / cold start through the edge:   %.2f\n", ratio(results["slow-suspend"], results["slow-stop"]))
}

// launch creates app from ref in iad with autostop in mode and an idle
// timeout of 1s (and env, [env] lines), and returns its machine.
func launch(w *benchworld.World, app, ref, mode, env string) api.Machine {
	dir, err := w.AppDir(app)
	if err != nil {
		log.Fatal(err)
	}
	must(w.Perch(dir, "launch", "--image", ref, "--regions", "iad", "--name", app))
	toml := filepath.Join(dir, "perch.toml")
	b, err := os.ReadFile(toml)
	if err != nil {
		log.Fatal(err)
	}
	s := strings.Replace(string(b), "[http_service]\n", fmt.Sprintf("[http_service]\n  auto_stop_machines = %q\n  min_machines_running = 0\n  idle_timeout = \"1s\"\n", mode), 1)
	if env != "" {
		s += "\n[env]\n" + env
	}
	if err := os.WriteFile(toml, []byte(s), 0o644); err != nil {
		log.Fatal(err)
	}
	must(w.Perch(dir, "deploy", "--smoke-window", "1s"))
	ms, err := w.Client().ListMachines(context.Background(), app, "")
	if err != nil || len(ms) != 1 {
		log.Fatalf("%s: machines %v, %v; want one", app, ms, err)
	}
	return ms[0]
}

// waitState waits until the machine is in state (autostop's doing).
func waitState(ctx context.Context, w *benchworld.World, app, id, state string) {
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := w.Client().GetMachine(ctx, app, id)
		if err == nil && m.State == state {
			return
		}
		if time.Now().After(deadline) {
			log.Fatalf("%s: machine %s never became %s (%v, %v)", app, id, state, m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answer sends GET url with Host host and waits for a 200.
func answer(url, host string, timeout time.Duration) error {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := (&http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func stats(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("median %s (min %s, max %s; n=%d)", s[len(s)/2].Round(100*time.Microsecond), s[0].Round(100*time.Microsecond), s[len(s)-1].Round(100*time.Microsecond), len(s))
}

func ratio(a, b []time.Duration) float64 {
	med := func(ds []time.Duration) time.Duration { s := slices.Clone(ds); slices.Sort(s); return s[len(s)/2] }
	return float64(med(a)) / float64(med(b))
}

func must(out string, err error) string {
	if err != nil {
		log.Fatal(err)
	}
	return out
}

func nproc() int { return runtime.NumCPU() }
