package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/perchhq/perch/internal/edge"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// listenMetrics opens Config.MetricsAddr before anything runs, so that a
// taken port stops the agent with a clear error instead of a silent gap in
// the host's metrics.
func (a *Agent) listenMetrics() (net.Listener, error) {
	if a.cfg.MetricsAddr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("agent: metrics: %w; pass another --metrics-addr, or \"\" for none", err)
	}
	return ln, nil
}

// serveMetrics serves GET /metrics on ln until ctx is done: the edge's
// metrics and the agent process's own (Go runtime, process).
func (a *Agent) serveMetrics(ctx context.Context, ln net.Listener, e *edge.Edge) {
	reg := e.Metrics()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if a.anycast != nil && a.anycast.sp != nil {
		reg.MustRegister(a.anycast.sp.Collectors()...) // anycast.go
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", e.MetricsHandler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	a.log.Info("serving metrics", "addr", "http://"+ln.Addr().String()+"/metrics")
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("metrics server stopped", "err", err)
	}
}
