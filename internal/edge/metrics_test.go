package edge

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/perchhq/perch/internal/api"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads the edge's /metrics as Prometheus would.
func scrape(t *testing.T, e *Edge) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(e.MetricsHandler())
	defer srv.Close()
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// series finds the metric of family name whose labels include labels.
func series(fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// counter is the value of a counter or gauge series; -1 if missing.
func counter(t *testing.T, e *Edge, name string, labels map[string]string) float64 {
	t.Helper()
	m := series(scrape(t, e), name, labels)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return -1
}

func TestMetrics(t *testing.T) {
	m := startHolder(t, "s1", "fra", "127.0.0.2")
	defer m.letGo()
	w := newWorld(t, "ams")
	w.app("shop")
	w.place("shop", m.machine, 80, api.StateStarted)
	w.commit()
	srv := w.serve(80)

	var bytes int
	for range 3 {
		res, body := get(t, srv, "shop.perch.local", nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d", res.StatusCode)
		}
		bytes += len(body)
	}
	get(t, srv, "nope.perch.local", nil)
	done := hold(srv, "shop.perch.local")
	m.waitHeld(t, 1)

	machine := map[string]string{"app": "shop", "region": "fra", "machine": "s1"}
	fams := scrape(t, w.e)
	ok := map[string]string{"app": "shop", "region": "fra", "machine": "s1", "code": "200"}
	if s := series(fams, "perch_edge_requests_total", ok); s == nil || s.Counter.GetValue() != 3 {
		t.Errorf("perch_edge_requests_total%v = %v, want 3", ok, s)
	}
	if s := series(fams, "perch_edge_requests_total", map[string]string{"app": "", "code": "404"}); s == nil || s.Counter.GetValue() != 1 {
		t.Errorf("perch_edge_requests_total for the unknown host = %v, want 1", s)
	}
	if s := series(fams, "perch_edge_response_bytes_total", machine); s == nil || s.Counter.GetValue() != float64(bytes) {
		t.Errorf("perch_edge_response_bytes_total = %v, want %d", s, bytes)
	}
	if s := series(fams, "perch_edge_request_duration_seconds", machine); s == nil || s.Histogram.GetSampleCount() != 3 {
		t.Errorf("perch_edge_request_duration_seconds = %v, want 3 samples", s)
	}
	if s := series(fams, "perch_edge_active_connections", machine); s == nil || s.Gauge.GetValue() != 1 {
		t.Errorf("perch_edge_active_connections with a request in flight = %v, want 1", s)
	}
	m.letGo()
	<-done
	waitFor(t, "the finished request to leave the gauge", func() bool {
		return counter(t, w.e, "perch_edge_active_connections", machine) == 0
	})

	// A machine that leaves the table takes its series along.
	w.e.table.removeMachine("shop.s1")
	w.commit()
	if s := series(scrape(t, w.e), "perch_edge_requests_total", machine); s != nil {
		t.Errorf("series of a removed machine remain: %v", s)
	}
}
