package devcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/server"
)

// A world with Options.Servers above 1 runs its control plane as that many
// `perch server` processes clustered (--cluster-name), each with its own
// data dir (<dir>/servers/sN) and ports, as a real deployment runs them
// (docs/servers.md): every server takes the agents' leaf nodes
// (--leaf-listen), and agents and the CLI get every server's API URL and
// fail over between them.
//
// A server that dies is not started again: the cluster runs on without it
// (a majority is left), which is what a world of several servers is for
// trying; `perch dev status` shows it exited, and the next `perch dev up`
// starts it again on its data. (Agents are restarted: a dead agent takes
// its region's edge down, a dead server of three takes nothing down.)

// ServerInfo describes one control plane server in world.json.
type ServerInfo struct {
	Name   string `json:"name"`
	APIURL string `json:"api_url"`
	// PID is the server's process; in a one-server world, perch dev up's
	// own (the server runs in it).
	PID     int    `json:"pid"`
	DataDir string `json:"data_dir"`
}

// APIURLs is every server's API URL, comma-separated, as the CLI's and
// the agents' --server take them (the first server's alone in a world
// without servers[]).
func (i Info) APIURLs() string {
	var urls []string
	for _, s := range i.Servers {
		urls = append(urls, s.APIURL)
	}
	if len(urls) == 0 {
		return i.APIURL
	}
	return strings.Join(urls, ",")
}

// CheckServers checks Options.Servers (1 or 0, 3 or 5) against the
// other options; Start checks it too.
func CheckServers(opts Options) error {
	n := opts.Servers
	switch {
	case n < 0:
		return fmt.Errorf("--servers %d: give 1 (the default: the control plane in perch dev up's process), 3 or 5", n)
	case n <= 1:
		return nil
	case n%2 == 0:
		return fmt.Errorf("--servers %d: a cluster needs an odd number of servers (3 or 5): its state is kept by a majority (a quorum), and %d servers survive no more losses than %d", n, n, n-1)
	case n > 5:
		return fmt.Errorf("--servers %d: at most 5 servers in a dev world (3 survive losing one, 5 two)", n)
	case opts.Anycast:
		return errors.New("--servers does not go with --anycast yet: an anycast world runs one control plane on the lab's management bridge")
	case opts.NATSURL != "":
		return errors.New("--servers runs a cluster of embedded NATS servers; it does not go with --nats")
	case opts.Certs.ACME.Directory != "":
		return errors.New("--servers does not take the ACME flags yet: a world of several servers issues certificates from the dev CA only")
	}
	return nil
}

// serverProc is one server of a clustered world, run as a child process.
type serverProc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{}
	err     error
}

// startServers starts the world's servers as processes and waits until
// each answers; it fills w.info.Servers and the world's tokens.
func (w *World) startServers(ctx context.Context) error {
	opts := w.opts
	n := opts.Servers
	type ports struct{ api, nats, cluster, leaf string }
	ps := make([]ports, n)
	var natsURLs, peers, leafURLs []string
	for i := range ps {
		var err error
		p := &ps[i]
		if i == 0 && !strings.HasSuffix(opts.APIListen, ":0") {
			p.api = opts.APIListen
		} else if p.api, err = freeAddrOn("127.0.0.1"); err != nil {
			return err
		}
		if p.nats, err = freeAddrOn("127.0.0.1"); err != nil {
			return err
		}
		if p.cluster, err = freeAddrOn("127.0.0.1"); err != nil {
			return err
		}
		if p.leaf, err = freeAddrOn("127.0.0.1"); err != nil {
			return err
		}
		natsURLs = append(natsURLs, "nats://"+p.nats)
		peers = append(peers, p.cluster)
		leafURLs = append(leafURLs, "nats-leaf://"+p.leaf)
	}
	// The secrets every server shares, made in the first one's data dir
	// and copied, as docs/servers.md says (kept across restarts).
	first := filepath.Join(opts.Dir, "servers", "s1")
	files, err := server.InitClusterSecrets(first)
	if err != nil {
		return err
	}
	var infos []ServerInfo
	for i, p := range ps {
		name := "s" + strconv.Itoa(i+1)
		dataDir := filepath.Join(opts.Dir, "servers", name)
		if i > 0 {
			if err := copyFiles(first, dataDir, files); err != nil {
				return err
			}
		}
		args := []string{opts.PerchBin, "server", "--server-name", name,
			"--listen", p.api, "--nats-listen", p.nats, "--nats-advertise", strings.Join(natsURLs, ","),
			"--cluster-name", "perch-dev", "--cluster-listen", p.cluster, "--cluster-peers", strings.Join(peers, ","),
			"--leaf-listen", p.leaf, "--leaf-advertise", strings.Join(leafURLs, ","),
			"--data-dir", dataDir, "--machine-net", opts.MachineNet.String(), "--dev-ca",
			// Every server is a mesh member too, in the first region, as
			// the one-server world's control plane is.
			"--region", opts.Regions[0], "--mesh-port", "0", "--mesh-host", "127.0.0.1",
			"--simulate-latency", strconv.FormatFloat(opts.Latency, 'f', -1, 64)}
		if opts.HostTimeout > 0 {
			args = append(args, "--host-timeout", opts.HostTimeout.String())
		}
		if opts.MeterInterval > 0 {
			args = append(args, "--meter-interval", opts.MeterInterval.String())
		}
		infos = append(infos, ServerInfo{Name: name, APIURL: "http://" + p.api, DataDir: dataDir})
		sp, err := w.startServerProc(name, args)
		if err != nil {
			return err
		}
		infos[i].PID = sp.cmd.Process.Pid
	}
	w.mu.Lock()
	w.info.Servers = infos
	w.mu.Unlock()
	tok, err := os.ReadFile(filepath.Join(first, "admin-token"))
	if err != nil {
		return fmt.Errorf("the cluster's admin token: %w", err)
	}
	w.adminTok = strings.TrimSpace(string(tok))
	for _, s := range infos {
		if err := w.waitServer(ctx, s, 90*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// startServerProc starts one server process; its log goes to
// logs/server-<name>.log.
func (w *World) startServerProc(name string, args []string) (*serverProc, error) {
	logPath := filepath.Join(w.opts.Dir, "logs", "server-"+name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("server log: %w", err)
	}
	defer lf.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Own process group (a Ctrl-C reaches perch dev up, which stops
	// servers last); gone with perch dev up, and else perch dev down kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server %s: %w", name, err)
	}
	sp := &serverProc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		sp.err = cmd.Wait()
		close(sp.done)
		w.mu.Lock()
		closing := w.closing
		w.mu.Unlock()
		if !closing {
			w.log.Warn("server exited; not started again (the cluster runs on with the others; the next perch dev up starts it)", "server", name, "err", sp.err, "log", logPath)
		}
	}()
	w.mu.Lock()
	w.servers = append(w.servers, sp)
	w.mu.Unlock()
	return sp, nil
}

// waitServer waits until s's API answers the admin token.
func (w *World) waitServer(ctx context.Context, s ServerInfo, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := api.NewClient(s.APIURL, w.adminTok)
	var sp *serverProc
	w.mu.Lock()
	for _, p := range w.servers {
		if p.name == s.Name {
			sp = p
		}
	}
	w.mu.Unlock()
	for {
		_, err := c.ListHosts(ctx)
		if err == nil {
			return nil
		}
		if sp != nil {
			select {
			case <-sp.done:
				return fmt.Errorf("server %s exited: %v; its log %s ends:\n%s", s.Name, sp.err, sp.logPath, logTail(sp.logPath, 10))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server %s did not answer in %s: %w; its log: %s", s.Name, timeout, err, filepath.Join(w.opts.Dir, "logs", "server-"+s.Name+".log"))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// clusterInfo fills world.json's fields that a one-server world takes
// from its in-process server: the organisation's token (through the API),
// the dev CA's certificate (the first server writes it to its data dir).
func (w *World) clusterInfo(ctx context.Context) error {
	info := w.Info()
	first := info.Servers[0]
	t, err := api.NewClient(info.APIURLs(), w.adminTok).CreateToken(ctx, server.DefaultOrg, api.CreateTokenRequest{Kind: auth.TokenOrg, Name: "dev world"})
	if err != nil {
		return fmt.Errorf("dev world: the organisation's token: %w", err)
	}
	pem, err := os.ReadFile(filepath.Join(first.DataDir, server.DevCAFile))
	if err != nil {
		return fmt.Errorf("dev world: the dev CA: %w", err)
	}
	ca, err := writeCACert(w.opts.Dir, pem)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.info.APIURL, w.info.UIURL = first.APIURL, first.APIURL+"/ui/"
	w.info.Registry = strings.TrimPrefix(first.APIURL, "http://")
	w.info.Token, w.info.Org, w.info.CACert = t.Secret, server.DefaultOrg, ca
	return nil
}

// stopServers stops every server process still running: SIGTERM, then
// after 30 s SIGQUIT and SIGKILL (waitOrQuit).
func (w *World) stopServers() error {
	w.mu.Lock()
	procs := w.servers
	w.servers = nil
	w.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	var errs []error
	for _, p := range procs {
		if !waitOrQuit(p.cmd.Process, p.done, 30*time.Second) {
			errs = append(errs, fmt.Errorf("server %s did not stop in 30s; killed (its goroutines are at the end of its log)", p.name))
		}
	}
	return errors.Join(errs...)
}

// killServers is perch dev down's, after perch dev up died: every server
// of world.json still running is stopped (SIGTERM, then SIGKILL).
func killServers(i Info) {
	var pids []int
	for _, s := range i.Servers {
		if s.PID > 0 && s.PID != i.PID && processRunning(s.PID) {
			_ = syscall.Kill(s.PID, syscall.SIGTERM)
			pids = append(pids, s.PID)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range pids {
		for processRunning(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if processRunning(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func copyFiles(from, to string, names []string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return fmt.Errorf("server data dir: %w", err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(from, n))
		if err != nil {
			return fmt.Errorf("cluster secrets: %w", err)
		}
		if err := os.WriteFile(filepath.Join(to, n), b, 0o600); err != nil {
			return fmt.Errorf("cluster secrets: %w", err)
		}
	}
	return nil
}

// logTail is the last n lines of the file at path.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
