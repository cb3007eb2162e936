package edge

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the edge's Prometheus metrics. Series carry the app and the
// machine (and its region) that answered; requests no machine answered
// (unknown host, no machine, over a cap) have empty machine labels.
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec
	bytesIn     *prometheus.CounterVec
	bytesOut    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	rejected    *prometheus.CounterVec
	tcpRejected *prometheus.CounterVec
	autostarts  *prometheus.CounterVec
	udpFlows    *prometheus.CounterVec
	udpDropped  *prometheus.CounterVec
	clientConns prometheus.Gauge
	// fastNative and fastHanded count HTTP/1.1 requests the fast path
	// served itself and those it handed to net/http (fast.go).
	fastNative, fastHanded prometheus.Counter
}

var machineLabels = []string{"app", "region", "machine"}

// latencyBuckets reach down to 250µs: the edge's own cost is well under a
// millisecond and should show.
var latencyBuckets = []float64{.00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

func newMetrics(t *table) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_requests_total", Help: "HTTP requests the edge answered, by app, machine and status code.",
		}, append(machineLabels, "code")),
		bytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_request_bytes_total", Help: "Request body bytes read from clients.",
		}, machineLabels),
		bytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_response_bytes_total", Help: "Response body bytes sent to clients.",
		}, machineLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "perch_edge_request_duration_seconds", Help: "Time from a request's arrival to the end of its response.",
			Buckets: latencyBuckets,
		}, machineLabels),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_rejected_total",
			Help: "Connections and requests the edge turned away: client_cap (connections per client address), app_cap (in flight per app), busy (every machine at its hard limit), body_timeout (a request body below the minimum rate or paused too long: 408), upload_cap (bodies streaming per client address: 429).",
		}, []string{"reason"}),
		tcpRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_tcp_rejected_total",
			Help: "Raw TCP connections the edge closed without taking them to a machine, by app and reason: no_machine (none in rotation), unreachable (every machine tried failed to connect), busy (every machine at its hard limit), app_cap (the app's connections at this edge at their cap), not_started (no machine in rotation and none started in time).",
		}, []string{"app", "reason"}),
		udpFlows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_udp_flows_total",
			Help: "UDP flows (a client address's datagrams to a public UDP port) the edge ended, by app and outcome: done (idle or the edge stopped after it carried them to a machine), and, without a machine, the reasons of perch_edge_tcp_rejected_total.",
		}, []string{"app", "outcome"}),
		udpDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_udp_dropped_total",
			Help: "Datagrams from clients the edge dropped, by app and reason: queue (a flow's queue was full while it connected), no_machine (the flow found no machine).",
		}, []string{"app", "reason"}),
		autostarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "perch_edge_autostarts_total",
			Help: "Machines the edge started for requests it held (autostart), by app and result: started (ready for the held requests), failed (none was ready within the start timeout).",
		}, []string{"app", "result"}),
		clientConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "perch_edge_client_connections", Help: "Client connections open on the edge's public ports.",
		}),
	}
	fast := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "perch_edge_http1_fast_requests_total",
		Help: "HTTP/1.1 requests on the fast path (perch agent --http1=fast), by path: native (served by the fast path), handed_off (a request it leaves to net/http, with its connection: bodies, upgrades, Expect, statics, the edge's own answers).",
	}, []string{"path"})
	m.fastNative, m.fastHanded = fast.WithLabelValues("native"), fast.WithLabelValues("handed_off")
	m.reg.MustRegister(fast)
	m.reg.MustRegister(m.requests, m.bytesIn, m.bytesOut, m.duration, m.rejected, m.tcpRejected, m.udpFlows, m.udpDropped, m.autostarts, m.clientConns, activeCollector{t})
	for _, r := range []string{"client_cap", "app_cap", "busy", "body_timeout", "upload_cap"} {
		m.rejected.WithLabelValues(r)
	}
	return m
}

// observe records one finished request.
func (m *metrics) observe(app, region, machine string, status int, in, out int64, d time.Duration) {
	m.requests.WithLabelValues(app, region, machine, codeString(status)).Inc()
	if in > 0 {
		m.bytesIn.WithLabelValues(app, region, machine).Add(float64(in))
	}
	m.bytesOut.WithLabelValues(app, region, machine).Add(float64(out))
	m.duration.WithLabelValues(app, region, machine).Observe(d.Seconds())
}

// machineObs are one machine's series, kept in its load so that a request
// does not look them up by label values (a hash and a lock each): those
// of its last status code, and the others.
type machineObs struct {
	code              int
	requests          prometheus.Counter
	bytesIn, bytesOut prometheus.Counter
	duration          prometheus.Observer
}

// observeMachine is observe for a request machine l answered.
func (m *metrics) observeMachine(l *load, status int, in, out int64, d time.Duration) {
	o := l.obs.Load()
	if o == nil || o.code != status {
		n := &machineObs{code: status, requests: m.requests.WithLabelValues(l.app, l.region, l.machine, codeString(status))}
		if o != nil {
			n.bytesIn, n.bytesOut, n.duration = o.bytesIn, o.bytesOut, o.duration
		} else {
			n.bytesIn = m.bytesIn.WithLabelValues(l.app, l.region, l.machine)
			n.bytesOut = m.bytesOut.WithLabelValues(l.app, l.region, l.machine)
			n.duration = m.duration.WithLabelValues(l.app, l.region, l.machine)
		}
		l.obs.Store(n)
		o = n
	}
	o.requests.Inc()
	if in > 0 {
		o.bytesIn.Add(float64(in))
	}
	o.bytesOut.Add(float64(out))
	o.duration.Observe(d.Seconds())
}

// statusCodes are the status codes as label values, made once.
var statusCodes = func() (c [600]string) {
	for i := range c {
		c[i] = strconv.Itoa(i)
	}
	return c
}()

func codeString(status int) string {
	if status >= 0 && status < len(statusCodes) {
		return statusCodes[status]
	}
	return strconv.Itoa(status)
}

// forgetApp drops the series of an app that left the route table.
func (m *metrics) forgetApp(app string) {
	m.tcpRejected.DeletePartialMatch(prometheus.Labels{"app": app})
	m.autostarts.DeletePartialMatch(prometheus.Labels{"app": app})
}

// forget drops the series of a machine that left the route table.
func (m *metrics) forget(app, machine string) {
	l := prometheus.Labels{"app": app, "machine": machine}
	m.requests.DeletePartialMatch(l)
	m.bytesIn.DeletePartialMatch(l)
	m.bytesOut.DeletePartialMatch(l)
	m.duration.DeletePartialMatch(l)
}

var activeDesc = prometheus.NewDesc("perch_edge_active_connections",
	"What the edge has in flight to each machine now: requests on HTTP ports, connections on raw TCP ports.",
	machineLabels, nil)

// activeCollector reads the machine loads at scrape time, so the request
// path pays nothing for the gauge.
type activeCollector struct{ t *table }

func (c activeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- activeDesc }

func (c activeCollector) Collect(ch chan<- prometheus.Metric) {
	c.t.mu.Lock()
	active := c.t.book.active()
	c.t.mu.Unlock()
	for k, n := range active {
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(n), k[0], k[1], k[2])
	}
}

// Metrics is the registry of the edge's metrics. The agent registers its
// own collectors in it and serves it with MetricsHandler.
func (e *Edge) Metrics() *prometheus.Registry { return e.metrics.reg }

// MetricsHandler serves the registry in the Prometheus text format, for
// GET /metrics.
func (e *Edge) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(e.metrics.reg, promhttp.HandlerOpts{ErrorLog: errorLogger{e}})
}

type errorLogger struct{ e *Edge }

func (l errorLogger) Println(v ...any) { l.e.log.Warn("metrics", "err", v) }
