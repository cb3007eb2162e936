package agent

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
)

// Readiness: a started machine takes traffic only once it is ready. With
// health checks, when every check passes; without, when each of its
// services' internal ports accepts a TCP connection, which the host
// probes from outside the machine, as the edge will connect. A machine
// with no TCP service is ready when it starts. The status carries the
// answer (Ready) and, until then, why not (NotReady); edges route only to
// ready machines.

// Port probe pacing: every probeFirst for the first probeQuick (most apps
// listen within a second of starting, and a request may be waiting for
// this one: autostart), then slower, for as long as the process runs
// unready. A refused connect costs microseconds.
const (
	probeFirst = 5 * time.Millisecond
	probeQuick = time.Second
	probeMax   = time.Second
	probeDial  = time.Second
)

// portProbe is the worker's probe of its current process's ports.
type portProbe struct {
	started time.Time // the process start it probes
	gen     int64     // the config generation it probes
	open    bool      // every port accepted a connection
	cancel  context.CancelFunc
	seq     int
	done    chan int // gets seq when every port accepted
}

func newPortProbe() *portProbe { return &portProbe{done: make(chan int, 1)} }

// tcpPorts are the internal ports of the config's TCP services, sorted.
func tcpPorts(c api.MachineConfig) []int {
	var ports []int
	for _, s := range c.Services {
		if s.InternalPort > 0 && s.Protocol != "udp" && !slices.Contains(ports, s.InternalPort) {
			ports = append(ports, s.InternalPort)
		}
	}
	slices.Sort(ports)
	return ports
}

// readiness says whether the started machine is ready, and if not why.
func (w *worker) readiness(spec store.MachineSpec, checks []api.CheckStatus) (bool, string) {
	if want := health.MachineChecks(spec.Config); len(want) > 0 {
		if len(checks) < len(want) {
			return false, "starting: health checks have not run yet"
		}
		for _, c := range checks {
			switch c.Status {
			case api.CheckPassing:
			case api.CheckCritical:
				return false, fmt.Sprintf("check %s is critical: %s", c.Name, firstLine(c.Output))
			default:
				return false, fmt.Sprintf("starting: check %s is not passing yet", c.Name)
			}
		}
		return true, ""
	}
	ports := tcpPorts(spec.Config)
	if len(ports) == 0 || w.probe.open {
		return true, ""
	}
	if len(ports) == 1 {
		return false, fmt.Sprintf("starting: port %d not listening yet", ports[0])
	}
	return false, fmt.Sprintf("starting: ports %s not all listening yet", joinInts(ports))
}

// startProbe probes the ports of the process that started at st, unless
// it already does or the machine has checks (they decide instead).
func (w *worker) startProbe(ctx context.Context, spec store.MachineSpec, st perchrt.State) {
	p := w.probe
	if p.started.Equal(st.StartedAt) && p.gen == spec.ConfigGeneration && (p.open || p.cancel != nil) {
		return
	}
	w.stopProbe()
	p.started, p.gen, p.open = st.StartedAt, spec.ConfigGeneration, false
	ports := tcpPorts(spec.Config)
	if len(health.MachineChecks(spec.Config)) > 0 || len(ports) == 0 || spec.PrivateIP == "" {
		return
	}
	pctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.seq++
	seq, ip := p.seq, spec.PrivateIP
	go func() {
		if probePorts(pctx, ip, ports) {
			select {
			case p.done <- seq:
			case <-pctx.Done():
			}
		}
	}()
}

// stopProbe stops probing; a result still on its way is stale.
func (w *worker) stopProbe() {
	p := w.probe
	if p.cancel != nil {
		p.cancel()
		p.cancel = nil
	}
	p.seq++
	p.open = false
}

// onProbe records that the current process's ports listen and reports
// the machine ready.
func (w *worker) onProbe(ctx context.Context, seq int) {
	p := w.probe
	if seq != p.seq || p.cancel == nil {
		return
	}
	p.cancel()
	p.cancel = nil
	p.open = true
	w.reportReady(ctx)
}

// reportReady writes the machine's readiness if it changed.
func (w *worker) reportReady(ctx context.Context) {
	if w.status.State != api.StateStarted {
		return
	}
	spec, _ := w.current()
	ready, why := w.readiness(spec, w.status.Checks)
	if ready == w.status.Ready && why == w.status.NotReady {
		return
	}
	s := w.status
	s.Ready, s.NotReady = ready, why
	s.UpdatedAt = time.Now().UTC()
	w.status = s
	if err := w.a.putStatus(ctx, w.key, s); err != nil && ctx.Err() == nil { // statusq.go
		w.log.Warn("report readiness", "err", err)
	}
	if ready {
		w.log.Info("machine ready")
	}
}

// probePorts dials ip on every port until each has accepted once, and
// says whether they all did before ctx ended.
func probePorts(ctx context.Context, ip string, ports []int) bool {
	d := net.Dialer{Timeout: probeDial}
	wait, start := probeFirst, time.Now()
	left := slices.Clone(ports)
	for {
		var still []int
		for _, port := range left {
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				still = append(still, port)
				continue
			}
			_ = c.Close()
		}
		if left = still; len(left) == 0 {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		if time.Since(start) > probeQuick {
			wait = min(wait*2, probeMax)
		}
	}
}

func joinInts(ns []int) string {
	var b []byte
	for i, n := range ns {
		if i > 0 {
			b = append(b, ", "...)
		}
		b = strconv.AppendInt(b, int64(n), 10)
	}
	return string(b)
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
