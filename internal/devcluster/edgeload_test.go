package devcluster_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/devcluster"
)

// TestConcurrencyLimitsAndMetrics: [http_service.concurrency] in
// perch.toml reaches every edge; a request over the local machine's limit
// goes to the next region; each region's agent serves the edge's metrics
// on its edge address, port 9091.
func TestConcurrencyLimitsAndMetrics(t *testing.T) {
	w := startWorld(t, devcluster.Options{Regions: []string{"ams", "iad"}})
	info := w.Info()
	edge := map[string]string{}
	for _, r := range info.Regions {
		edge[r.Code] = r.EdgeAddr
	}
	ref := pushImage(t, w, "hello:v1")
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "ams,iad", "--name", "busy")
	toml := filepath.Join(dir, "perch.toml")
	f, err := os.OpenFile(toml, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(f, "\n[http_service.concurrency]\n  type = \"requests\"\n  soft_limit = 1\n  hard_limit = 1\n")
	f.Close()
	mustPerch(t, w, dir, "deploy")
	ams := edge["ams"] + ":80"
	expectAnswer(t, ams, "busy", "ams")
	expectAnswer(t, edge["iad"]+":80", "busy", "iad")

	// Hold the ams machine's only slot; the next request goes to iad.
	held := make(chan string, 1)
	go func() {
		code, body, _, err := getTimeout(ams, "busy", "/sleep/3s", 10*time.Second)
		held <- fmt.Sprintf("%d %s %v", code, body, err)
	}()
	metrics := "http://" + net.JoinHostPort(edge["ams"], strconv.Itoa(devcluster.MetricsPort)) + "/metrics"
	eventually(t, 5*time.Second, "the ams edge counts the held request", func() (bool, string) {
		m := scrapeText(metrics)
		return strings.Contains(m, `perch_edge_active_connections{app="busy",machine=`) &&
			strings.Contains(metricLine(m, "perch_edge_active_connections", `app="busy"`, `region="ams"`), "} 1"), m
	})
	code, body, _, err := get(ams, "busy", "/")
	if err != nil || code != 200 || !strings.Contains(body, "hello from iad ") {
		t.Errorf("with the ams machine at its limit, the ams edge answered %d %q (%v); want iad", code, body, err)
	}
	if got := <-held; !strings.HasPrefix(got, "200 slept 3s in ams") {
		t.Errorf("held request: %s", got)
	}
	m := scrapeText(metrics)
	for _, want := range [][]string{
		{"perch_edge_requests_total", `app="busy"`, `region="ams"`, `code="200"`},
		{"perch_edge_requests_total", `app="busy"`, `region="iad"`, `code="200"`},
		{"perch_edge_request_duration_seconds_count", `app="busy"`, `region="ams"`},
		{"go_goroutines"},
	} {
		if metricLine(m, want[0], want[1:]...) == "" {
			t.Errorf("ams /metrics has no %v", want)
		}
	}
}

func getTimeout(edgeAddr, app, path string, d time.Duration) (int, string, http.Header, error) {
	req, _ := http.NewRequest("GET", "http://"+edgeAddr+path, nil)
	req.Host = app + ".perch.local"
	c := &http.Client{Timeout: d, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, strings.TrimSpace(string(b)), res.Header, nil
}

func scrapeText(url string) string {
	res, err := httpClient.Get(url)
	if err != nil {
		return err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// metricLine is the first line of text of metric name with every label.
func metricLine(text, name string, labels ...string) string {
next:
	for line := range strings.SplitSeq(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		return line
	}
	return ""
}
