// Command idle measures issue 9's two numbers on this machine: the CPU an
// idle host's agent uses with 50 machines (against the same agent with
// none), and how long a deploy that changes only config takes against the
// app's first deploy. It needs root. Run it with bench/idle/run.sh, which
// records the output in bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/bench/internal/benchworld"
	"github.com/perchhq/perch/internal/api"
)

const appName = "idle"

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary")
	regions := flag.String("regions", "iad,ams,sin", "regions of the world; the deploys put one machine in each")
	host := flag.String("host", "iad", "region whose host gets the machines of the idle measurement")
	machines := flag.Int("machines", 50, "machines on the host for the idle measurement")
	settle := flag.Duration("settle", 10*time.Second, "wait after the machines are ready before measuring")
	window := flag.Duration("window", 30*time.Second, "CPU measurement window")
	deploys := flag.Int("deploys", 5, "config-only deploys after the first")
	smoke := flag.Duration("smoke", time.Second, "perch deploy --smoke-window")
	verbose := flag.Bool("v", false, "print the output of the first and the last deploy")
	perfOut := flag.String("perf", "", "if set, after the idle measurement with machines, record the agent with perf for one more window into this file and print the hottest symbols")
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
	if err := bench(ctx, w, *host, *machines, *settle, *window, *deploys, *smoke, *perfOut, *verbose); err != nil {
		logs, _ := filepath.Glob(filepath.Join(w.Info().Dir, "logs", "*.log"))
		for _, l := range logs {
			if b, err := os.ReadFile(l); err == nil {
				fmt.Fprintf(os.Stderr, "== %s (last 4 KB)\n%s\n", l, b[max(0, len(b)-4096):])
			}
		}
		w.Close()
		log.Fatal(err)
	}
}

func bench(ctx context.Context, w *benchworld.World, host string, machines int, settle, window time.Duration, deploys int, smoke time.Duration, perfOut string, verbose bool) error {
	info := w.Info()
	var agentPID int
	for _, r := range info.Regions {
		if r.Code == host {
			agentPID = r.PID
		}
	}
	if agentPID == 0 {
		return fmt.Errorf("region %s is not in the world", host)
	}
	ref, err := w.PushHello("idle")
	if err != nil {
		return err
	}
	app, err := w.AppDir(appName)
	if err != nil {
		return err
	}
	var codes []string
	for _, r := range info.Regions {
		codes = append(codes, r.Code)
	}
	if _, err := w.Perch(app, "launch", "--image", ref, "--regions", strings.Join(codes, ","), "--name", appName); err != nil {
		return err
	}
	tomlPath := filepath.Join(app, "perch.toml")
	base, err := os.ReadFile(tomlPath)
	if err != nil {
		return err
	}
	fmt.Printf("machine: %s, %d CPUs; regions %s; date %s\n\n", hostname(), nproc(), strings.Join(codes, ","), time.Now().UTC().Format("2006-01-02"))

	// Deploys: the first (cold: no machine, no image on any host), then
	// config-only changes (one [env] value) of the same image.
	deployArgs := []string{"deploy", "--smoke-window", smoke.String()}
	var out string
	first, err := timed(func() (err error) { out, err = w.Perch(app, deployArgs...); return err })
	if err != nil {
		return err
	}
	if verbose {
		fmt.Printf("first deploy (%s):\n%s\n", round(first), out)
	}
	var later []time.Duration
	for i := 1; i <= deploys; i++ {
		toml := string(base) + fmt.Sprintf("\n[env]\n  BENCH_DEPLOY = '%d'\n", i)
		if err := os.WriteFile(tomlPath, []byte(toml), 0o644); err != nil {
			return err
		}
		d, err := timed(func() (err error) { out, err = w.Perch(app, deployArgs...); return err })
		if err != nil {
			return err
		}
		if verbose && i == deploys {
			fmt.Printf("config-only deploy %d (%s):\n%s\n", i, round(d), out)
		}
		if err := checkEnv(ctx, w, strconv.Itoa(i), len(codes)); err != nil {
			return err
		}
		later = append(later, d)
	}
	fmt.Printf("perch deploy, command start to successful return (%s; rolling, one machine per region)\n", strings.Join(deployArgs, " "))
	fmt.Printf("  first (cold: app's first machines, image pulled and unpacked on every host): %s\n", round(first))
	if len(later) > 0 {
		m := median(later)
		fmt.Printf("  config-only ([env] value changed, same image), %d deploys: median %s (min %s, max %s)\n",
			len(later), round(m), round(slices.Min(later)), round(slices.Max(later)))
		fmt.Printf("  ratio config-only median / first: %.2f\n", float64(m)/float64(first))
	}
	fmt.Println()

	// Idle: the host with machines, then with none.
	t0 := time.Now()
	if _, err := w.Perch(app, "scale", "count", strconv.Itoa(machines), "--region", host, "--yes", "--wait-timeout", "5m"); err != nil {
		return err
	}
	if err := waitMachines(ctx, w, host, machines, 5*time.Minute); err != nil {
		return err
	}
	scaleUp := time.Since(t0)
	time.Sleep(settle)
	full, err := measure(agentPID, window)
	if err != nil {
		return err
	}
	if len(full.groups[groupShim].pids) != machines {
		return fmt.Errorf("expected %d shims under the agent, found %d", machines, len(full.groups[groupShim].pids))
	}
	var perfReport string
	if perfOut != "" {
		if perfReport, err = perfRecord(agentPID, window, perfOut); err != nil {
			return err
		}
	}

	t0 = time.Now()
	if _, err := w.Perch(app, "scale", "count", "0", "--region", host, "--yes"); err != nil {
		return err
	}
	if err := waitMachines(ctx, w, host, 0, 2*time.Minute); err != nil {
		return err
	}
	if err := waitNoShims(agentPID, 2*time.Minute); err != nil {
		return err
	}
	scaleDown := time.Since(t0)
	time.Sleep(settle)
	empty, err := measure(agentPID, window)
	if err != nil {
		return err
	}

	fmt.Printf("idle host %s: CPU over %s after %s settled, %% of one core (/proc/<pid>/stat utime+stime)\n", host, window, settle)
	fmt.Printf("  (scale to %d machines until all ready: %s; scale to 0 until every shim exited: %s)\n", machines, round(scaleUp), round(scaleDown))
	fmt.Printf("  %-44s %14s %14s\n", "", fmt.Sprintf("%d machines", machines), "0 machines")
	for _, g := range groupOrder {
		a, b := full.groups[g], empty.groups[g]
		fmt.Printf("  %-44s %14s %14s\n", groupLabel[g], a.cell(full.secs), b.cell(empty.secs))
	}
	fa, ea := full.pct(groupAgent)+full.pct(groupReaped), empty.pct(groupAgent)+empty.pct(groupReaped)
	fmt.Printf("  agent with its reaped children: %.3f%% with %d machines, %.3f%% with 0", fa, machines, ea)
	if ea > 0 {
		fmt.Printf(" (ratio %.1f)", fa/ea)
	}
	fmt.Printf("; goal < 1%% with %d: %s\n", machines, verdict(fa < 1))
	fmt.Printf("  agent + shims + runc: %.3f%% with %d machines (%.4f%% per machine above the empty agent)\n",
		fa+full.pct(groupShim)+full.pct(groupRunc), machines, (fa+full.pct(groupShim)+full.pct(groupRunc)-ea)/float64(machines))
	if perfReport != "" {
		fmt.Printf("\nperf record of the agent with %d machines (%s, %s):\n%s", machines, window, perfOut, perfReport)
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// checkEnv checks that the deploy really rolled every region to the new
// config: each live machine has BENCH_DEPLOY = want.
func checkEnv(ctx context.Context, w *benchworld.World, want string, n int) error {
	ms, err := w.Client().ListMachines(ctx, appName, "")
	if err != nil {
		return err
	}
	live := 0
	for _, m := range ms {
		if m.State == api.StateDestroying || m.State == api.StateDestroyed {
			continue
		}
		live++
		if got := m.Config.Env["BENCH_DEPLOY"]; got != want {
			return fmt.Errorf("after deploy %s machine %s (%s, %s) has BENCH_DEPLOY=%q", want, m.ID, m.Region, m.State, got)
		}
	}
	if live != n {
		return fmt.Errorf("after deploy %s: %d live machines, want %d", want, live, n)
	}
	return nil
}

// waitMachines waits until region has exactly n machines that are not
// destroyed, all started and ready.
func waitMachines(ctx context.Context, w *benchworld.World, region string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ms, err := w.Client().ListMachines(ctx, appName, region)
		if err != nil {
			return err
		}
		live, ready := 0, 0
		for _, m := range ms {
			if m.State == api.StateDestroying || m.State == api.StateDestroyed {
				continue
			}
			live++
			if m.State == api.StateStarted && m.Ready {
				ready++
			}
		}
		if live == n && ready == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d machines, %d ready after %s; want %d", region, live, ready, timeout, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func waitNoShims(agent int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		procs, err := readProcs()
		if err != nil {
			return err
		}
		n := len(classify(agent, procs)[groupShim].pids)
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d shims still running %s after scaling to 0", n, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func timed(f func() error) (time.Duration, error) {
	t0 := time.Now()
	err := f()
	return time.Since(t0), err
}

// perfRecord samples the agent's stacks with perf for d and returns the
// hottest symbols (self time) with their callers.
func perfRecord(pid int, d time.Duration, out string) (string, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return "", fmt.Errorf("-perf: %w", err)
	}
	rec := exec.Command("perf", "record", "-q", "-F", "997", "-g", "-p", strconv.Itoa(pid), "-o", out, "--", "sleep", strconv.Itoa(int(d.Seconds())))
	if b, err := rec.CombinedOutput(); err != nil {
		return "", fmt.Errorf("perf record: %w\n%s", err, b)
	}
	rep, err := exec.Command("perf", "report", "-i", out, "--stdio", "--no-children", "--sort", "symbol", "-g", "none", "--percent-limit", "1").Output()
	if err != nil {
		return "", fmt.Errorf("perf report: %w", err)
	}
	return string(rep), nil
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
