package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/testimage"
)

// loadGen sends GETs and POSTs for an app through several edges, with
// keep-alive connections as browsers and API clients use them, and counts
// every answer: anything but a 200 with the app's own body is a failure.
type loadGen struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	stop       chan struct{}
	stopOnce   sync.Once
	// answer says whether a 200 response's body is the app's answer to a
	// GET or a POST (whose body was postBody).
	answer func(post bool, body string) bool
	wg     sync.WaitGroup
	// logs is the world's log directory: a failure's edge log lines are
	// looked up there by the request id the edge's answer gives.
	logs string
}

// maxLoadRequests bounds a load run whatever its duration.
const maxLoadRequests = 400_000

// postBody is what the load generator POSTs.
const postBody = `{"order":42}`

// helloAnswers: the sample app answers every request "hello from ...".
func helloAnswers(post bool, body string) bool { return strings.HasPrefix(body, "hello from ") }

func startLoad(t *testing.T, w *devcluster.World, app string, edges []string, perEdge int, limit time.Duration, answer func(post bool, body string) bool) *loadGen {
	t.Helper()
	g := &loadGen{stop: make(chan struct{}), answer: answer, logs: filepath.Join(w.Info().Dir, "logs")}
	deadline := time.Now().Add(limit)
	for _, edge := range edges {
		for i := range perEdge {
			g.wg.Go(func() {
				c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
				defer c.CloseIdleConnections()
				for n := 0; ; n++ {
					select {
					case <-g.stop:
						return
					default:
					}
					if time.Now().After(deadline) || g.ok.Load()+g.failed.Load() >= maxLoadRequests {
						return
					}
					g.one(c, edge, app, (n+i)%2 == 0)
					// A steady stream, not a flood: the point is that
					// none fails, on a 2-core machine shared with the
					// world.
					time.Sleep(2 * time.Millisecond)
				}
			})
		}
	}
	return g
}

func (g *loadGen) one(c *http.Client, edge, app string, post bool) {
	method, body := http.MethodGet, io.Reader(nil)
	if post {
		method, body = http.MethodPost, strings.NewReader(postBody)
	}
	req, _ := http.NewRequest(method, "http://"+edge+"/", body)
	req.Host = app + ".perch.local"
	res, err := c.Do(req)
	if err != nil {
		g.fail(fmt.Sprintf("%s %s: %v", method, edge, err))
		return
	}
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK || !g.answer(post, string(b)) {
		g.fail(fmt.Sprintf("%s %s: %d %q %v", method, edge, res.StatusCode, b, err))
		return
	}
	g.ok.Add(1)
}

func (g *loadGen) fail(msg string) {
	g.failed.Add(1)
	g.mu.Lock()
	if len(g.failures) < 20 {
		g.failures = append(g.failures, time.Now().Format("15:04:05.000")+" "+msg)
	}
	g.mu.Unlock()
}

// requestID finds the request ids in the edge's answers.
var requestID = regexp.MustCompile(`request id ([0-9a-f]+)`)

// logged is every line of the hosts' logs that names a request id of the
// failures, so that a failure on CI can be explained after the fact.
func (g *loadGen) logged(failures []string) string {
	var ids []string
	for _, f := range failures {
		for _, m := range requestID.FindAllStringSubmatch(f, -1) {
			ids = append(ids, m[1])
		}
	}
	// A request the client gave up on has no answer to name its id: the
	// edge's log of requests that took seconds shows where it waited.
	slow := slices.ContainsFunc(failures, func(f string) bool { return strings.Contains(f, "Timeout") })
	if len(ids) == 0 && !slow {
		return "(no request id in the answers)"
	}
	files, _ := filepath.Glob(filepath.Join(g.logs, "*.log"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			named := slices.ContainsFunc(ids, func(id string) bool { return strings.Contains(line, id) })
			if named || slow && tookSeconds(line) {
				out = append(out, filepath.Base(f)+": "+line)
			}
		}
	}
	if len(out) == 0 {
		return "(nothing under request ids " + strings.Join(ids, ", ") + " nor requests over 5 s in " + g.logs + ")"
	}
	// What the hosts did with the machines those requests went to (drains,
	// stop signals, exits), to tell a machine that hung from one that was
	// stopped under its requests.
	var machines []string
	for _, l := range out {
		if m := machineField.FindStringSubmatch(l); m != nil && !slices.Contains(machines, m[1]) {
			machines = append(machines, m[1])
		}
	}
	var life []string
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"msg":"request"`) || !slices.ContainsFunc(machines, func(id string) bool { return strings.Contains(line, id) }) {
				continue
			}
			if len(life) < 80 {
				life = append(life, filepath.Base(f)+": "+line)
			}
		}
	}
	if len(life) > 0 {
		out = append(out, "what the hosts logged of machines "+strings.Join(machines, ", ")+" besides requests:")
		out = append(out, life...)
	}
	return strings.Join(out, "\n")
}

var machineField = regexp.MustCompile(`"machine":"([0-9a-f]+)"`)

var durationMS = regexp.MustCompile(`"duration_ms":([0-9.]+)`)

// tookSeconds says whether an edge's request log line took over 5 s.
func tookSeconds(line string) bool {
	m := durationMS.FindStringSubmatch(line)
	if m == nil {
		return false
	}
	ms, err := strconv.ParseFloat(m[1], 64)
	return err == nil && ms > 5000
}

// check ends nothing: it says how many failed since the last check.
func (g *loadGen) expectNoFailures(t *testing.T, what string) {
	t.Helper()
	if n := g.failed.Load(); n > 0 {
		g.mu.Lock()
		defer g.mu.Unlock()
		t.Errorf("%s: %d of %d requests failed; first failures:\n%s\nwhat the hosts logged of them:\n%s",
			what, n, n+g.ok.Load(), strings.Join(g.failures, "\n"), g.logged(g.failures))
	}
}

// end stops the load and waits for its requests; calling it again does
// nothing.
func (g *loadGen) end() { g.stopOnce.Do(func() { close(g.stop) }); g.wg.Wait() }

// deploysPerStrategy is how many consecutive deploys run under load for
// each strategy; PERCH_DEPLOY_ROUNDS changes it.
func deploysPerStrategy() int {
	if n, err := strconv.Atoi(os.Getenv("PERCH_DEPLOY_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 10
}

// TestDeploysOfGunicornLoseNoRequest deploys a real HTTP server, Debian's
// gunicorn built from its packages, 10 times with each strategy
// (PERCH_DEPLOY_ROUNDS changes it) while a load generator sends GETs and
// POSTs through two regions' edges: not one request may fail.
func TestDeploysOfGunicornLoseNoRequest(t *testing.T) {
	parallelFirst(t, 0) // the longest tests; see TestMain
	img := testimage.NeedDebian(t, testimage.Gunicorn())
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	info := w.Info()
	ref := info.Registry + "/gunicorn:v1"
	if err := testimage.Push(context.Background(), img, ref, info.Token); err != nil {
		t.Fatal(err)
	}
	dir, release, edges := launchReleases(t, w, ref, "wsgi", "--port", "8080")
	// gunicorn's app answers a GET with its path and uid, and echoes a POST.
	answers := func(post bool, body string) bool {
		if post {
			return body == postBody
		}
		return strings.Contains(body, `"path": "/"`) && strings.Contains(body, `"uid": 1000`)
	}
	load := startLoad(t, w, "wsgi", edges, 2, 20*time.Minute, answers)
	defer load.end()
	deployRounds(t, w, dir, "wsgi", release, load, deploysPerStrategy())
	load.end()
	t.Logf("%d requests in all, %d failed", load.ok.Load(), load.failed.Load())
	load.expectNoFailures(t, "the whole run")
}

// TestDeploysLoseNoRequest deploys the sample app with each strategy
// while a load generator sends GETs and POSTs through two regions' edges,
// then deploys three broken releases: not one request may fail, the
// broken deploys must fail with the reason, and the app must keep serving
// its last good release, which a rollback can go back from.
func TestDeploysLoseNoRequest(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad", "ams"}})
	ctx := context.Background()
	ref := pushImage(t, w, "hello:v1")
	dir, release, edges := launchReleases(t, w, ref, "shop")
	for _, r := range w.Info().Regions {
		expectAnswer(t, r.EdgeAddr+":80", "shop", r.Code)
	}

	load := startLoad(t, w, "shop", edges, 2, 20*time.Minute, helloAnswers)
	defer load.end()
	// The sample app's rounds are few: TestDeploysOfGunicornLoseNoRequest
	// runs the ten per strategy with a real server.
	good := deployRounds(t, w, dir, "shop", release, load, min(deploysPerStrategy(), 2))

	// Three broken releases, each under the same load.
	for _, bad := range []struct {
		name, env string
		args      []string
		want      []string
	}{
		{"exits at once", `HELLO_CRASH = "boom: no DATABASE_URL"`, nil, []string{"exit code 2", "boom: no DATABASE_URL"}},
		{"exits after 5s", `HELLO_EXIT_AFTER = "5s"`, []string{"--smoke-window", "8s"}, []string{"exit code 1", "exiting after 5s"}},
		{"never listens", `HELLO_NO_LISTEN = "1"`, []string{"--wait-timeout", "6s"}, []string{"not ready after 6s", "port 8080 not listening yet"}},
	} {
		release(bad.env)
		args := append([]string{"deploy", "--smoke-window", "1s"}, bad.args...)
		out, err := perch(t, w, dir, args...)
		if err == nil {
			t.Fatalf("release that %s deployed:\n%s", bad.name, out)
		}
		for _, want := range append(bad.want, "the app keeps running v") {
			if !strings.Contains(out, want) {
				t.Errorf("failed deploy of a release that %s does not say %q:\n%s", bad.name, want, out)
			}
		}
		load.expectNoFailures(t, "deploy of a release that "+bad.name)
		ms, _ := liveMachines(ctx, w, "shop")
		if len(ms) != 2 {
			t.Errorf("after the failed deploy (%s): %d machines, want the 2 of the good release", bad.name, len(ms))
		}
		for _, m := range ms {
			if m.Config.Env["ROUND"] != strconv.Itoa(good) || m.State != api.StateStarted {
				t.Errorf("after the failed deploy (%s) machine %s is %s with round %q, want the good release", bad.name, m.ID, m.State, m.Config.Env["ROUND"])
			}
		}
	}

	rs, err := w.Client().ListReleases(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for _, r := range rs {
		if r.Status == api.ReleaseFailed {
			failed++
		}
	}
	if failed != 3 {
		t.Errorf("perch releases shows %d failed releases, want 3: %+v", failed, rs)
	}
	out := mustPerch(t, w, dir, "releases")
	if !regexp.MustCompile(`(?m)^v\d+\s+failed`).MatchString(out) || !regexp.MustCompile(`(?m)^v\d+\s+complete`).MatchString(out) {
		t.Errorf("perch releases does not list the failed and the complete releases:\n%s", out)
	}

	// Roll back: the release before the current good one comes back.
	mustPerch(t, w, dir, "releases", "rollback", "--smoke-window", "1s")
	load.expectNoFailures(t, "rollback")
	ms, _ := liveMachines(ctx, w, "shop")
	for _, m := range ms {
		if m.Config.Env["ROUND"] != strconv.Itoa(good-1) {
			t.Errorf("after the rollback machine %s runs round %q, want %d", m.ID, m.Config.Env["ROUND"], good-1)
		}
		if !strings.Contains(m.Config.Image, "@sha256:") {
			t.Errorf("a rollback should deploy the digest the release ran, got image %s", m.Config.Image)
		}
	}
	load.end()
	t.Logf("%d requests in all, %d failed", load.ok.Load(), load.failed.Load())
	load.expectNoFailures(t, "the whole run")
}

// TestStopSignalAndTimeout checks that kill_signal and kill_timeout are
// what a machine gets on a deploy, a scale down and a stop: the app logs
// the signal it got and, every second after it, that it is still
// running, until the SIGKILL that must come only after kill_timeout.
func TestStopSignalAndTimeout(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ref := pushImage(t, w, "hello:v1")
	const killTimeout = 30
	for _, how := range []string{"deploy", "scale down", "stop"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			app := "linger-" + strings.ReplaceAll(how, " ", "")
			dir := t.TempDir()
			mustPerch(t, w, dir, "launch", "--image", ref, "--regions", "iad", "--name", app)
			// Top-level keys go before the first table.
			path := filepath.Join(dir, "perch.toml")
			base, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			toml := fmt.Sprintf("kill_signal = \"SIGINT\"\nkill_timeout = %d\n%s\n[env]\n  HELLO_LINGER = \"1\"\n", killTimeout, base)
			if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
				t.Fatal(err)
			}
			mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
			ms, err := w.Client().ListMachines(ctx, app, "")
			if err != nil || len(ms) != 1 {
				t.Fatalf("machines: %v %v", ms, err)
			}
			old := ms[0].ID
			start := time.Now()
			switch how {
			case "deploy":
				mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
			case "scale down":
				mustPerch(t, w, dir, "scale", "count", "0", "--yes")
			case "stop":
				mustPerch(t, w, dir, "machine", "stop", old)
				if err := w.Client().WaitMachine(ctx, app, old, api.StateStopped, 2*time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			took := time.Since(start)
			var lines []string
			eventually(t, 30*time.Second, "the old machine's last lines reach the log", func() (bool, string) {
				lines = nil
				_ = w.Client().Logs(ctx, app, api.LogOptions{Machine: old, Lines: 200}, func(l api.LogLine) error {
					lines = append(lines, l.Message)
					return nil
				})
				last := stillRunning(lines)
				return last >= killTimeout-2, fmt.Sprintf("last: %d s after the signal", last)
			})
			text := strings.Join(lines, "\n")
			if !strings.Contains(text, "got signal SIGINT") {
				t.Errorf("%s: the machine did not get SIGINT:\n%s", how, text)
			}
			if last := stillRunning(lines); last < killTimeout-2 || last > killTimeout {
				t.Errorf("%s: the machine ran %d s after SIGINT, want about %d (its kill_timeout) and then SIGKILL:\n%s", how, last, killTimeout, text)
			}
			if took < killTimeout*time.Second {
				t.Errorf("%s took %s, less than the kill_timeout", how, took)
			}
		})
	}
}

var stillRunningRE = regexp.MustCompile(`still running (\d+)s after SIGINT`)

// stillRunning is the last "still running Ns after SIGINT" the app logged.
func stillRunning(lines []string) int {
	last := -1
	for _, l := range lines {
		if m := stillRunningRE.FindStringSubmatch(l); m != nil {
			last, _ = strconv.Atoi(m[1])
		}
	}
	return last
}

// liveMachines are the app's machines not on their way out: a deploy
// destroys the old ones after it reports success, in the background.
func liveMachines(ctx context.Context, w *devcluster.World, app string) ([]api.Machine, error) {
	ms, err := w.Client().ListMachines(ctx, app, "")
	var out []api.Machine
	for _, m := range ms {
		if m.State != api.StateDestroying && m.State != api.StateDestroyed {
			out = append(out, m)
		}
	}
	return out, err
}

// deployRounds deploys app rounds times with each strategy under load,
// each release a new [env] ROUND, and checks that no request failed and
// that the app then runs the last round in each region; it returns that
// round.
func deployRounds(t *testing.T, w *devcluster.World, dir, app string, release func(env string), load *loadGen, rounds int) int {
	t.Helper()
	ctx := context.Background()
	round := 0
	for _, strategy := range []string{"rolling", "immediate", "canary", "bluegreen"} {
		start := time.Now()
		for range rounds {
			round++
			release(fmt.Sprintf("ROUND = %q", strconv.Itoa(round)))
			mustPerch(t, w, dir, "deploy", "--strategy", strategy, "--smoke-window", "1s")
		}
		t.Logf("%d %s deploys in %s; %d requests so far, %d failed", rounds, strategy, time.Since(start).Round(time.Second), load.ok.Load(), load.failed.Load())
		load.expectNoFailures(t, strategy+" deploys")
		ms, err := liveMachines(ctx, w, app)
		if err != nil || len(ms) != len(w.Info().Regions) {
			t.Fatalf("after %s deploys: %d machines (%v), want one per region", strategy, len(ms), err)
		}
		for _, m := range ms {
			if got := m.Config.Env["ROUND"]; got != strconv.Itoa(round) {
				t.Errorf("after %s deploys machine %s runs round %s, want %d", strategy, m.ID, got, round)
			}
		}
	}
	return round
}

// launchReleases launches app from ref in iad and ams (with launch's
// extra args) and deploys it once, as release ROUND 0. release(env)
// rewrites perch.toml with that [env] for the next deploy; edges are the
// regions' edge addresses.
func launchReleases(t *testing.T, w *devcluster.World, ref, app string, extra ...string) (dir string, release func(env string), edges []string) {
	t.Helper()
	dir = t.TempDir()
	mustPerch(t, w, dir, append([]string{"launch", "--image", ref, "--regions", "iad,ams", "--name", app}, extra...)...)
	base, err := os.ReadFile(filepath.Join(dir, "perch.toml"))
	if err != nil {
		t.Fatal(err)
	}
	release = func(env string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "perch.toml"), append(append([]byte{}, base...), "\n[env]\n"+env+"\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	release(`ROUND = "0"`)
	mustPerch(t, w, dir, "deploy", "--smoke-window", "1s")
	for _, r := range w.Info().Regions {
		edges = append(edges, r.EdgeAddr+":80")
	}
	return dir, release, edges
}
