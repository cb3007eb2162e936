package devcluster_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/runtime/microvm"
)

// TestSuspendResume: a machine suspended with `perch machine suspend` is
// reported suspended and stops answering; `perch machine start` resumes
// it with its in-memory counter where it was, and the edge serves it
// again. A stopped machine cannot be suspended (409). A new config
// discards the snapshot: the machine boots afresh, counter at 0. For
// runc machines and, where this host boots them, microVMs.
func TestSuspendResume(t *testing.T) {
	t.Parallel() // see TestMain
	t.Run("runc", func(t *testing.T) {
		t.Parallel()
		testSuspendResume(t, "runc")
	})
	t.Run("microvm", func(t *testing.T) {
		t.Parallel()
		probe, err := microvm.New(microvm.Config{StateDir: t.TempDir(), Init: perchBin})
		if err == nil {
			err = probe.Check()
		}
		if err != nil {
			t.Skipf("this host cannot boot microVMs: %v", err)
		}
		testSuspendResume(t, "microvm")
	})
}

func testSuspendResume(t *testing.T, runtime string) {
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	ctx := context.Background()
	c := w.Client()
	ref := pushImage(t, w, "hello:v1")
	one := 1
	if _, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: "susp"}); err != nil {
		t.Fatal(err)
	}
	m, err := c.CreateMachine(ctx, "susp", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{
		Image: ref, Guest: api.Guest{Runtime: runtime, MemoryMB: 256},
		// A service that autostops by suspend (not within the test: one
		// machine stays running) asks for a machine that can be suspended.
		Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{{Port: 80, Handlers: []string{"http"}}},
			Autostop: api.AutostopSuspend, MinMachinesRunning: &one, IdleTimeout: "10m"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMachine(ctx, "susp", m.ID, api.StateStarted, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	base := "http://" + m.PrivateIP + ":8080/count"
	post := func() string {
		t.Helper()
		var got string
		eventually(t, time.Minute, "POST /count answers", func() (bool, string) {
			resp, err := httpClient.Post(base, "text/plain", nil)
			if err != nil {
				return false, err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			got = strings.TrimSpace(string(b))
			return resp.StatusCode == 200, got
		})
		return got
	}
	for want := 1; want <= 3; want++ {
		if got := post(); got != fmt.Sprint(want) {
			t.Fatalf("POST /count = %q, want %d", got, want)
		}
	}
	dir := t.TempDir()

	out := mustPerch(t, w, dir, "machine", "suspend", m.ID, "-a", "susp")
	if !strings.Contains(out, "is suspended") {
		t.Fatalf("perch machine suspend said %q; want it to say the machine is suspended", out)
	}
	got, err := c.GetMachine(ctx, "susp", m.ID)
	if err != nil || got.State != api.StateSuspended {
		t.Fatalf("machine after suspend: %+v, %v; want state %s", got, err, api.StateSuspended)
	}
	quick := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := quick.Get(base); err == nil {
		resp.Body.Close()
		t.Errorf("a suspended machine answered GET /count: %s", resp.Status)
	}

	start := time.Now()
	mustPerch(t, w, dir, "machine", "start", m.ID, "-a", "susp")
	if err := c.WaitMachine(ctx, "susp", m.ID, api.StateStarted, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	edge := w.Info().Regions[0].EdgeAddr + ":80"
	var body string
	eventually(t, 20*time.Second, "the edge serves the resumed machine's counter", func() (bool, string) {
		code, b, _, err := get(edge, "susp", "/count")
		if err != nil {
			return false, err.Error()
		}
		body = strings.TrimSpace(b)
		return code == 200, fmt.Sprintf("%d %s", code, b)
	})
	t.Logf("perch machine start to the edge serving the resumed machine: %v", time.Since(start).Round(time.Millisecond))
	if body != "3" {
		t.Fatalf("after resume GET /count through the edge = %q, want 3 (the counter from before suspend)", body)
	}
	if got := post(); got != "4" {
		t.Errorf("after resume POST /count = %q, want 4", got)
	}
	got, _ = c.GetMachine(ctx, "susp", m.ID)
	if n := len(got.Events); n < 2 || !strings.Contains(eventsText(got.Events), "resuming from the snapshot") {
		t.Errorf("events do not say the machine resumed: %s", eventsText(got.Events))
	}

	// Only a started machine can be suspended.
	mustPerch(t, w, dir, "machine", "stop", m.ID, "-a", "susp")
	if err := c.WaitMachine(ctx, "susp", m.ID, api.StateStopped, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if out, err := perch(t, w, dir, "machine", "suspend", m.ID, "-a", "susp"); err == nil || !strings.Contains(out, "not started") {
		t.Errorf("suspending a stopped machine: %v\n%s\nwant a refusal saying it is not started", err, out)
	}
	var he *api.HTTPError
	if err := c.SuspendMachine(ctx, "susp", m.ID); !asHTTPError(err, &he) || he.StatusCode != http.StatusConflict {
		t.Errorf("API suspend of a stopped machine: %v; want 409", err)
	}

	// A new config discards the snapshot.
	mustPerch(t, w, dir, "machine", "start", m.ID, "-a", "susp")
	if err := c.WaitMachine(ctx, "susp", m.ID, api.StateStarted, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	post()
	mustPerch(t, w, dir, "machine", "suspend", m.ID, "-a", "susp")
	cfg := m.Config
	cfg.Env = map[string]string{"RELEASE": "2"}
	if _, err := c.UpdateMachine(ctx, "susp", m.ID, api.CreateMachineRequest{Config: cfg}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "the updated machine serves a fresh counter", func() (bool, string) {
		resp, err := httpClient.Get(base)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)) == "0", string(b)
	})
}

func eventsText(evs []api.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "[%s %s: %s] ", e.Type, e.Status, e.Message)
	}
	return b.String()
}
