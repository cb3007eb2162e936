package devcluster_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
)

// The test app's health check.
const (
	checkInterval = time.Second
	checkGrace    = time.Second
)

// TestHealthChecks: a machine whose health check fails leaves rotation
// within one check interval (the other region answers) and comes back when
// the check passes; perch status shows why. A machine without checks is
// not affected by its own /health.
func TestHealthChecks(t *testing.T) {
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	ctx := context.Background()
	c := w.Client()
	edges := map[string]string{}
	for _, r := range w.Info().Regions {
		edges[r.Code] = r.EdgeAddr + ":80"
	}
	ref := pushImage(t, w, "hello:v1")

	// An app without checks, in iad only, whose /health is failing all
	// along: nothing looks at it, so it keeps answering.
	plainDir := t.TempDir()
	mustPerch(t, w, plainDir, "launch", "--image", ref, "--regions", "iad", "--name", "plain")
	mustPerch(t, w, plainDir, "deploy")
	expectAnswer(t, edges["iad"], "plain", "iad")
	plain := onlyMachine(t, c, "plain", "iad")
	hit(t, plain, "/health/fail")

	// The checked app, in iad and ams.
	dir := t.TempDir()
	mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad,ams", "--name", "checked")
	appendFile(t, filepath.Join(dir, "perch.toml"), fmt.Sprintf(`
[[http_service.checks]]
  interval = '%s'
  timeout = '500ms'
  grace_period = '%s'
  path = '/health'
`, checkInterval, checkGrace))
	mustPerch(t, w, dir, "deploy")
	expectAnswer(t, edges["iad"], "checked", "iad")
	iad, ams := onlyMachine(t, c, "checked", "iad"), onlyMachine(t, c, "checked", "ams")
	checkName := fmt.Sprintf("servicecheck-00-http-%d", 8080)
	var amsPassing *api.Machine
	for _, id := range []string{ams.ID, iad.ID} {
		eventually(t, 20*time.Second, "the machine's check passes", func() (bool, string) {
			m, err := c.GetMachine(ctx, "checked", id)
			if err != nil {
				return false, err.Error()
			}
			if id == ams.ID {
				amsPassing = m
			}
			passing := len(m.Checks) == 1 && m.Checks[0].Name == checkName && m.Checks[0].Status == api.CheckPassing
			// Past its grace period, a failure is critical at once.
			return passing && time.Since(startedAt(m)) > checkGrace, fmt.Sprint(m.Checks)
		})
	}
	amsChecked := healthCount(t, ams)

	// Failing: within one interval the iad edge answers from ams.
	hit(t, iad, "/health/fail")
	took := answerWithin(t, edges["iad"], "checked", "ams")
	t.Logf("the failing machine left rotation %s after its health started failing", took)
	if limit := checkInterval + time.Second; took > limit {
		t.Errorf("the failing machine left rotation after %s; want within one interval (%s) and a little", took, checkInterval)
	}
	out := mustPerch(t, w, dir, "status")
	wantNote := "check " + checkName + " is critical: GET /health: 503 Service Unavailable: unhealthy (switched by /health/fail)"
	if !strings.Contains(out, wantNote) || !strings.Contains(out, "1 critical") {
		t.Errorf("perch status does not show the critical check; want %q in:\n%s", wantNote, out)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(jsonPart(mustPerch(t, w, dir, "status", "--json"))), &st); err != nil {
		t.Fatal(err)
	}
	for _, m := range st.Machines {
		want := api.CheckPassing
		if m.ID == iad.ID {
			want = api.CheckCritical
		}
		if len(m.Checks) != 1 || m.Checks[0].Status != want {
			t.Errorf("perch status --json: machine %s (%s) has checks %+v, want one %s", m.ID, m.Region, m.Checks, want)
		}
	}

	// Passing again: back in rotation within one interval.
	hit(t, iad, "/health/ok")
	took = answerWithin(t, edges["iad"], "checked", "iad")
	t.Logf("the machine came back %s after its health passed again", took)
	if limit := checkInterval + time.Second; took > limit {
		t.Errorf("the machine came back after %s; want within one interval (%s) and a little", took, checkInterval)
	}

	// All this while the app without checks kept answering, and its host
	// never wrote a check result for it.
	expectAnswer(t, edges["iad"], "plain", "iad")
	if m, err := c.GetMachine(ctx, "plain", plain.ID); err != nil || len(m.Checks) != 0 || m.State != api.StateStarted {
		t.Errorf("machine without checks: %+v, %v; want started with no check results", m, err)
	}

	// When the process restarts, its checks start over: fresh results.
	exited := time.Now()
	resp, err := httpClient.Get("http://" + iad.PrivateIP + ":8080/exit")
	if err == nil {
		resp.Body.Close()
	}
	eventually(t, 30*time.Second, "the restarted iad machine's check passes again", func() (bool, string) {
		m, err := c.GetMachine(ctx, "checked", iad.ID)
		if err != nil {
			return false, err.Error()
		}
		fresh := len(m.Checks) == 1 && m.Checks[0].Status == api.CheckPassing && m.Checks[0].UpdatedAt.After(exited)
		return m.State == api.StateStarted && fresh, fmt.Sprint(m.State, m.Checks)
	})
	expectAnswer(t, edges["iad"], "checked", "iad")

	// A result is written only when it changes: the ams machine passed
	// at least three more checks since and its status was not written.
	eventually(t, 20*time.Second, "the ams machine is checked three more times", func() (bool, string) {
		n := healthCount(t, ams)
		return n >= amsChecked+3, fmt.Sprintf("%d checks, %d when it first passed", n, amsChecked)
	})
	if m, err := c.GetMachine(ctx, "checked", ams.ID); err != nil || !m.UpdatedAt.Equal(amsPassing.UpdatedAt) {
		t.Errorf("the ams machine's status was written again (updated %s, then %s) although its check kept passing: %v",
			amsPassing.UpdatedAt, m.UpdatedAt, err)
	}
}

// healthCount asks the sample app how many times its /health was checked.
func healthCount(t *testing.T, m api.Machine) int {
	t.Helper()
	resp, err := httpClient.Get("http://" + m.PrivateIP + ":8080/health/count")
	if err != nil {
		t.Fatalf("asking machine %s how often it was checked: %v", m.ID, err)
	}
	defer resp.Body.Close()
	var n int
	if _, err := fmt.Fscan(resp.Body, &n); err != nil {
		t.Fatalf("machine %s /health/count: %v", m.ID, err)
	}
	return n
}

// answerWithin polls the edge until app answers from region and says how
// long that took.
func answerWithin(t *testing.T, edgeAddr, app, region string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		code, body, _, err := get(edgeAddr, app, "/")
		if err == nil && code == 200 && strings.Contains(body, "hello from "+region+" ") {
			return time.Since(start)
		}
		last = fmt.Sprint(code, " ", body, err)
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("edge %s never answered for %s from %s; last: %s", edgeAddr, app, region, last)
	return 0
}

// startedAt is when the machine's host last reported it started.
func startedAt(m *api.Machine) time.Time {
	var at time.Time
	for _, e := range m.Events {
		if e.Status == api.StateStarted && e.Time().After(at) {
			at = e.Time()
		}
	}
	return at
}

func onlyMachine(t *testing.T, c *api.Client, app, region string) api.Machine {
	t.Helper()
	ms, err := c.ListMachines(context.Background(), app, region)
	if err != nil || len(ms) != 1 {
		t.Fatalf("machines of %s in %s: %d, %v; want one", app, region, len(ms), err)
	}
	return ms[0]
}

// hit sends GET path to a machine directly, on its private address.
func hit(t *testing.T, m api.Machine, path string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + m.PrivateIP + ":8080" + path)
	if err != nil {
		t.Fatalf("GET %s on machine %s: %v", path, m.ID, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s on machine %s: %s", path, m.ID, resp.Status)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
