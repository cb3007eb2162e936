// Command suspend measures resuming a suspended machine against starting
// it cold: in a dev world with one region, one machine of the sample app
// (examples/hello) is, n times each, suspended and started again (a
// resume from its snapshot) and stopped and started again (a cold boot),
// each timed from the API's start request until the host reports it
// started and the app answers GET /count on its private address. It prints the medians. Run as
// root from the repository root:
//
//	go build -o bin/perch ./cmd/perch && go run ./bench/suspend -perch bin/perch -n 5 [-runtime microvm]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/bench/internal/benchworld"
	"github.com/perchhq/perch/internal/api"
)

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	n := flag.Int("n", 5, "rounds of each")
	rt := flag.String("runtime", "runc", "machine runtime: runc or microvm")
	mem := flag.Int("memory", 256, "machine memory in MB")
	flag.Parse()
	if err := run(*perch, *n, *rt, *mem); err != nil {
		fmt.Fprintln(os.Stderr, "bench/suspend:", err)
		os.Exit(1)
	}
}

const app = "suspendbench"

func run(perchBin string, n int, rt string, mem int) error {
	ctx := context.Background()
	w, err := benchworld.Start(ctx, perchBin, []string{"iad"})
	if err != nil {
		return err
	}
	defer w.Close()
	ref, err := w.PushHello("v1")
	if err != nil {
		return err
	}
	c := w.Client()
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: app}); err != nil {
		return err
	}
	m, err := c.CreateMachine(ctx, app, api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
		Image: ref, Guest: api.Guest{CPUs: 1, MemoryMB: mem, Runtime: rt},
		Services: []api.Service{{Protocol: "tcp", InternalPort: 8080}},
	}})
	if err != nil {
		return err
	}
	if err := c.WaitMachine(ctx, app, m.ID, api.StateStarted, 2*time.Minute); err != nil {
		return err
	}
	url := "http://" + m.PrivateIP + ":8080/count"
	if _, err := answer(url, time.Minute); err != nil {
		return err
	}
	var resumes, colds []time.Duration
	for i := 0; i < n; i++ {
		// Resume: suspend, then time the start.
		if _, err := http.Post(url, "text/plain", nil); err != nil {
			return err
		}
		before, _ := answer(url, time.Second)
		if err := c.SuspendMachine(ctx, app, m.ID); err != nil {
			return err
		}
		if err := waitState(ctx, c, m.ID, api.StateSuspended); err != nil {
			return err
		}
		d, body, err := startAndAnswer(ctx, c, m.ID, url)
		if err != nil {
			return err
		}
		if body != before {
			return fmt.Errorf("resumed machine's counter is %q, was %q before suspend: not a resume", body, before)
		}
		resumes = append(resumes, d)
		// Cold: stop, then time the start.
		if err := c.StopMachine(ctx, app, m.ID, nil); err != nil {
			return err
		}
		if err := c.WaitMachine(ctx, app, m.ID, api.StateStopped, time.Minute); err != nil {
			return err
		}
		d, body, err = startAndAnswer(ctx, c, m.ID, url)
		if err != nil {
			return err
		}
		if body != "0" {
			return fmt.Errorf("cold-started machine's counter is %q, want 0", body)
		}
		colds = append(colds, d)
	}
	fmt.Printf("runtime %s, %d MB, %d rounds; API start request to GET /count answered on the private address\n", rt, mem, n)
	fmt.Printf("  resume from suspend: %s\n", stats(resumes))
	fmt.Printf("  cold start:          %s\n", stats(colds))
	return nil
}

func waitState(ctx context.Context, c *api.Client, id, want string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := c.GetMachine(ctx, app, id)
		if err != nil {
			return err
		}
		if m.State == want {
			return nil
		}
		if m.State == api.StateStopped && want == api.StateSuspended {
			return fmt.Errorf("machine was stopped instead of suspended: %s", m.Events[len(m.Events)-1].Message)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("machine still %s, want %s", m.State, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func startAndAnswer(ctx context.Context, c *api.Client, id, url string) (time.Duration, string, error) {
	start := time.Now()
	if err := c.StartMachine(ctx, app, id); err != nil {
		return 0, "", err
	}
	// As the edge does: traffic only once the host says started. (A
	// machine being restored drops packets until CRIU lifts its network
	// lock, so a connection tried earlier waits for a SYN retransmit.)
	if err := waitState(ctx, c, id, api.StateStarted); err != nil {
		return 0, "", err
	}
	body, err := answer(url, time.Minute)
	return time.Since(start), body, err
}

var client = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// answer polls GET url until it answers 200, for at most timeout.
func answer(url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return strings.TrimSpace(string(b)), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("GET %s: no answer in %s (%v)", url, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func stats(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	r := func(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }
	return fmt.Sprintf("median %v (min %v, max %v)", r(s[len(s)/2]), r(s[0]), r(s[len(s)-1]))
}
