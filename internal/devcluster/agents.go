package devcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/fdstore"
)

// MetricsPort is where each region's agent serves Prometheus metrics, on
// the region's edge address.
const MetricsPort = 9091

// agentProc is one region's agent, run as a child process.
type agentProc struct {
	region  string
	logPath string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	err     error
}

// Supervision: once the world is up, an agent that exits by itself (a
// crash, a SIGKILL) is started again at once, as systemd's Restart=always
// does on a server (docs/servers.md). Its machines run on under their
// shims meanwhile and the new agent adopts them; its edge is down only for
// the new agent's start. An agent that keeps dying young is started again
// after a growing delay (restartDelay), not in a tight loop.
const (
	// restartFirstDelay is the delay after the second quick death in a
	// row; it doubles with each further one up to restartMaxDelay.
	restartFirstDelay = 100 * time.Millisecond
	restartMaxDelay   = 5 * time.Second
	// stableRun is how long an agent must have run for its death to count
	// as the first (restarted with no delay).
	stableRun = 10 * time.Second
)

// restartDelay is how long to wait before starting again an agent that
// died after running for ran, the quick deaths before it being quick.
func restartDelay(ran time.Duration, quick int) time.Duration {
	if ran >= stableRun || quick == 0 {
		return 0
	}
	d := restartFirstDelay << (quick - 1)
	if d > restartMaxDelay || d <= 0 {
		d = restartMaxDelay
	}
	return d
}

func shimCommand(bin string) []string { return []string{bin, "runc-shim"} }

func (w *World) agentList() []*agentProc {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*agentProc
	for _, r := range w.info.Regions {
		if a := w.agents[r.Code]; a != nil {
			out = append(out, a)
		}
	}
	return out
}

// StartAgent starts region's agent process (again).
func (w *World) StartAgent(ctx context.Context, region string) error {
	w.lifeMu.Lock()
	defer w.lifeMu.Unlock()
	return w.startAgent(ctx, region)
}

// startAgent starts region's agent; w.lifeMu is held.
func (w *World) startAgent(ctx context.Context, region string) error {
	info := w.Info()
	var ri *RegionInfo
	for i := range info.Regions {
		if info.Regions[i].Code == region {
			ri = &info.Regions[i]
		}
	}
	if ri == nil {
		return fmt.Errorf("region %s is not part of this world", region)
	}
	logPath := filepath.Join(w.opts.Dir, "logs", "agent-"+region+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("agent log: %w", err)
	}
	defer lf.Close()
	cmd := exec.Command(w.opts.PerchBin, "agent",
		"--region", region, "--server", info.APIURLs(),
		"--state-dir", ri.StateDir, "--edge-addr", ri.EdgeAddr,
		"--metrics-addr", net.JoinHostPort(ri.EdgeAddr, strconv.Itoa(MetricsPort)),
		// Every host of the world shares one kernel: each WireGuard takes a
		// free port, and is reached on 127.0.0.1, the address its packets
		// come from (so the simulated latency finds the sender's region).
		"--mesh-port", "0", "--mesh-endpoint", "127.0.0.1",
		"--simulate-latency", strconv.FormatFloat(w.opts.Latency, 'f', -1, 64),
		// Whatever the agent's default: TUN mode needs a network
		// namespace per host, and these share one (AgentArgs may differ).
		"--mesh-mode", "netstack")
	if w.opts.MeterInterval > 0 {
		cmd.Args = append(cmd.Args, "--meter-interval", w.opts.MeterInterval.String())
	}
	cmd.Args = append(cmd.Args, w.opts.AgentArgs...)
	if w.lab != nil {
		args := w.anycastAgentArgs(region, cmd.Args)
		cmd = exec.Command(args[0], args[1:]...)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	// The region's descriptor store keeps the edge's listening sockets
	// while its agent is down (as systemd's FileDescriptorStoreMax= does):
	// connections then wait for the next agent instead of being refused.
	if fds, err := w.fdStore(region); err != nil {
		// The agent runs without: a restart then refuses connections.
		w.log.Warn("the edge's sockets will not be kept across agent restarts", "region", region, "err", err)
	} else {
		env, files := fds.Env()
		defer func() {
			for _, f := range files {
				f.Close()
			}
		}()
		cmd.Env = append(os.Environ(), env...)
		cmd.ExtraFiles = files
	}
	// A host joins once with a single-use join token, left in its state
	// dir (neither command line nor environment: every local user reads
	// those); later starts use its credential file.
	if _, err := os.Stat(filepath.Join(ri.StateDir, agent.CredentialFile)); errors.Is(err, os.ErrNotExist) {
		jt, err := w.joinToken(ctx, region)
		if err != nil {
			return fmt.Errorf("join token for %s: %w", region, err)
		}
		if err := os.MkdirAll(ri.StateDir, 0o700); err != nil {
			return fmt.Errorf("state dir of %s: %w", region, err)
		}
		if err := os.WriteFile(filepath.Join(ri.StateDir, agent.JoinTokenFile), []byte(jt+"\n"), 0o600); err != nil {
			return fmt.Errorf("join token for %s: %w", region, err)
		}
	}
	// Own process group: a Ctrl-C in the terminal reaches `perch dev up`,
	// which then stops agents in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent for %s: %w", region, err)
	}
	a := &agentProc{region: region, logPath: logPath, cmd: cmd, started: time.Now(), done: make(chan struct{})}
	go func() {
		a.err = cmd.Wait()
		close(a.done)
		w.supervise(a)
	}()
	w.mu.Lock()
	w.agents[region] = a
	for i := range w.info.Regions {
		if w.info.Regions[i].Code == region {
			w.info.Regions[i].PID = cmd.Process.Pid
		}
	}
	w.mu.Unlock()
	return nil
}

// joinToken makes a join token for a host of region: from the
// in-process server, else through the API.
func (w *World) joinToken(ctx context.Context, region string) (string, error) {
	if w.srv != nil {
		return w.srv.CreateJoinToken(ctx, region, time.Hour)
	}
	jt, err := w.Client().CreateJoinToken(ctx, api.JoinTokenRequest{Region: region})
	if err != nil {
		return "", err
	}
	return jt.Token, nil
}

// fdStore is region's descriptor store, made at its agent's first start;
// Close closes them all. w.lifeMu is held.
func (w *World) fdStore(region string) (*fdstore.Store, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s := w.fdStores[region]; s != nil {
		return s, nil
	}
	dir := filepath.Join(w.opts.Dir, "run")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("descriptor store of %s: %w", region, err)
	}
	s, err := fdstore.NewStore(filepath.Join(dir, "notify-"+region+".sock"), w.log.With("region", region))
	if err != nil {
		return nil, fmt.Errorf("descriptor store of %s: %w", region, err)
	}
	w.fdStores[region] = s
	return s, nil
}

// supervise starts region's agent again after a, the current one, exited
// by itself: not stopped (StopAgent, KillAgent, Close), and the world up.
func (w *World) supervise(a *agentProc) {
	w.lifeMu.Lock()
	defer w.lifeMu.Unlock()
	for {
		w.mu.Lock()
		current := w.agents[a.region] == a && w.up && !w.closing
		ran := time.Since(a.started)
		if ran >= stableRun {
			w.quickDeaths[a.region] = 0
		}
		delay := restartDelay(ran, w.quickDeaths[a.region])
		w.quickDeaths[a.region]++
		w.mu.Unlock()
		if !current {
			return
		}
		w.log.Warn("agent exited; starting it again", "region", a.region, "err", a.err, "ran", ran.Round(time.Millisecond), "delay", delay, "log", a.logPath)
		if delay > 0 {
			// Not holding lifeMu: Close and StopAgent go on meanwhile.
			w.lifeMu.Unlock()
			time.Sleep(delay)
			w.lifeMu.Lock()
			w.mu.Lock()
			current = w.agents[a.region] == a && !w.closing
			w.mu.Unlock()
			if !current {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := w.startAgent(ctx, a.region)
		cancel()
		if err == nil {
			w.mu.Lock()
			w.restarts[a.region]++
			w.mu.Unlock()
			if err := w.writeInfo(); err != nil { // the new pid, for perch dev down
				w.log.Error("world.json", "err", err)
			}
			return
		}
		w.log.Error("cannot start the agent again; will retry", "region", a.region, "err", err)
		a.started = time.Now()
	}
}

// AgentRestarts is how many times the world started region's agent again
// after it exited by itself.
func (w *World) AgentRestarts(region string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.restarts[region]
}

// StopAgent stops region's agent process; its machines keep running.
func (w *World) StopAgent(region string) error {
	w.lifeMu.Lock()
	defer w.lifeMu.Unlock()
	w.mu.Lock()
	a := w.agents[region]
	delete(w.agents, region)
	w.mu.Unlock()
	if a == nil {
		return fmt.Errorf("no agent running for %s", region)
	}
	return a.stop()
}

// RestartAgent stops region's agent and starts it again, waiting until its
// host heartbeats.
func (w *World) RestartAgent(ctx context.Context, region string) error {
	if err := w.StopAgent(region); err != nil {
		return err
	}
	if err := w.StartAgent(ctx, region); err != nil {
		return err
	}
	return w.waitHosts(ctx, 30*time.Second)
}

func (a *agentProc) stop() error {
	select {
	case <-a.done:
		return nil
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	if !waitOrQuit(a.cmd.Process, a.done, 30*time.Second) {
		return fmt.Errorf("agent for %s did not stop in 30s; killed (its goroutines are at the end of its log)", a.region)
	}
	return nil
}

// waitOrQuit waits up to wait for a signalled process to end (done
// closes), and reports whether it did. Else it sends SIGQUIT, so that Go
// prints every goroutine's stack to the process's log (where it hung),
// and SIGKILL 5 s later if it still runs.
func waitOrQuit(p *os.Process, done <-chan struct{}, wait time.Duration) bool {
	select {
	case <-done:
		return true
	case <-time.After(wait):
	}
	_ = p.Signal(syscall.SIGQUIT)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.Kill()
		<-done
	}
	return false
}

// exited reports why the agent stopped, if it did.
func (a *agentProc) exited() error {
	select {
	case <-a.done:
		if a.err == nil {
			return errors.New("exited")
		}
		return a.err
	default:
		return nil
	}
}

func processAlive(pid int) bool {
	return syscall.Kill(pid, 0) == nil
}
