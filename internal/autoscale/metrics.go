package autoscale

import (
	"net/http"
	"sync"

	"github.com/perchhq/perch/internal/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the autoscaler's Prometheus series, by app and region.
type Metrics struct {
	reg      *prometheus.Registry
	rps      *prometheus.GaugeVec
	conc     *prometheus.GaugeVec
	desired  *prometheus.GaugeVec
	machines *prometheus.GaugeVec

	mu   sync.Mutex
	seen map[string][]string // app -> regions with series
}

func newMetrics() *Metrics {
	l := []string{"app", "region"}
	m := &Metrics{
		reg:      prometheus.NewRegistry(),
		rps:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "perch_autoscale_demand_rps", Help: "Requests per second entering through the region's edges (origin region), by app."}, l),
		conc:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "perch_autoscale_demand_concurrency", Help: "Average requests in flight entering through the region's edges, by app."}, l),
		desired:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "perch_autoscale_desired_machines", Help: "Machines the autoscaler wants in the region, by app."}, l),
		machines: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "perch_autoscale_machines", Help: "Machines the app has in the region (stopped ones included)."}, l),
		seen:     map[string][]string{},
	}
	m.reg.MustRegister(m.rps, m.conc, m.desired, m.machines)
	return m
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

func (m *Metrics) set(app string, rs []api.AutoscaleRegion) {
	m.forget(app)
	m.mu.Lock()
	defer m.mu.Unlock()
	var regions []string
	for _, r := range rs {
		m.rps.WithLabelValues(app, r.Region).Set(r.RPS)
		m.conc.WithLabelValues(app, r.Region).Set(r.Concurrency)
		m.desired.WithLabelValues(app, r.Region).Set(float64(r.Desired))
		m.machines.WithLabelValues(app, r.Region).Set(float64(r.Machines))
		regions = append(regions, r.Region)
	}
	m.seen[app] = regions
}

func (m *Metrics) forget(app string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range m.seen[app] {
		for _, v := range []*prometheus.GaugeVec{m.rps, m.conc, m.desired, m.machines} {
			v.DeleteLabelValues(app, r)
		}
	}
	delete(m.seen, app)
}
