package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func TestRenderStatus(t *testing.T) {
	exit := 3
	ms := []api.Machine{
		machine("e2860f1c3d8e01", "sin", api.StateStarted, 0, "v2"),
		machine("9a1b2c3d4e5f60", "iad", api.StateStarted, 50, "v2"),
		machine("1f2e3d4c5b6a70", "ams", api.StateFailed, 58, "v2"),
		machine("0aa1b2c3d4e5f6", "iad", api.StateStarted, 10, ""),
	}
	ms[0].HostStatus = api.HostUnreachable
	ms[2].ExitCode = &exit
	ms[2].LastLogs = []string{"listening on :8080", "panic: no database"}
	ms[1].Checks = []api.CheckStatus{
		{Name: "servicecheck-00-tcp-8080", Status: api.CheckPassing, Output: "connected to 172.19.0.2:8080"},
		{Name: "servicecheck-01-http-8080", Status: api.CheckCritical, Output: "GET /health: 503 Service Unavailable: db down"},
	}
	ms[3].Checks = []api.CheckStatus{{Name: "servicecheck-00-http-8080", Status: api.CheckWarning, Output: "GET /health: connection refused"}}
	ms[0].Checks = []api.CheckStatus{{Name: "servicecheck-00-http-8080", Status: api.CheckPassing, Output: "GET /health: 200 OK"}}
	for i := range ms {
		ms[i].Config.Image = "127.0.0.1:4280/hello:1"
	}
	ms[1].Config.Guest.Runtime = "microvm"
	ms[2].Config.Guest.Runtime = "runc"
	now := t0.Add(time.Hour)

	var b strings.Builder
	renderStatus(&b, "hello", ms, now)
	got := b.String()
	wantLines := []string{
		"App: hello",
		"",
		"ID              STATE                       CHECKS                 REGION  RUNTIME  IMAGE                   RELEASE  AGE",
		"1f2e3d4c5b6a70  failed                      -                      ams     runc     127.0.0.1:4280/hello:1  v2       2m",
		"    exit code 3, last log lines:",
		"    | listening on :8080",
		"    | panic: no database",
		"0aa1b2c3d4e5f6  started                     1 warning              iad     runc     127.0.0.1:4280/hello:1  -        50m",
		"    check servicecheck-00-http-8080 is warning (grace period after start): GET /health: connection refused",
		"9a1b2c3d4e5f60  started                     1 passing, 1 critical  iad     microvm  127.0.0.1:4280/hello:1  v2       10m",
		"    check servicecheck-01-http-8080 is critical: GET /health: 503 Service Unavailable: db down",
		"e2860f1c3d8e01  started (host unreachable)  1 passing              sin     runc     127.0.0.1:4280/hello:1  v2       1h",
	}
	if diff := cmp.Diff(wantLines, strings.Split(strings.TrimSuffix(got, "\n"), "\n")); diff != "" {
		t.Errorf("status output (-want +got):\n%s", diff)
	}
}

// TestRenderStatusOutOfMemory: a machine the OOM killer ended says so,
// stopped or failed.
func TestRenderStatusOutOfMemory(t *testing.T) {
	exit := 137
	ms := []api.Machine{
		machine("1f2e3d4c5b6a70", "ams", api.StateFailed, 58, "v2"),
		machine("0aa1b2c3d4e5f6", "iad", api.StateStopped, 10, "v2"),
	}
	for i := range ms {
		ms[i].ExitCode, ms[i].OOMKilled = &exit, true
	}
	var b strings.Builder
	renderStatus(&b, "hello", ms, t0.Add(time.Hour))
	for _, want := range []string{
		"    exit code 137, out of memory: killed at its memory limit; give it more (memory_mb in [[vm]])",
		"    last exit: out of memory: killed at its memory limit; give it more (memory_mb in [[vm]])",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("perch status lacks %q:\n%s", want, b.String())
		}
	}
}

func TestRenderStatusEmpty(t *testing.T) {
	var b strings.Builder
	renderStatus(&b, "hello", nil, t0)
	if got := b.String(); !strings.Contains(got, "No machines") || !strings.Contains(got, "perch deploy") {
		t.Errorf("empty status = %q, want it to say there are no machines and how to make some", got)
	}
}

func TestFormatAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:      "0s",
		42 * time.Second:  "42s",
		5 * time.Minute:   "5m",
		47 * time.Hour:    "47h",
		72 * time.Hour:    "3d",
		59 * time.Minute:  "59m",
		119 * time.Second: "1m",
	} {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestFormatLogLine(t *testing.T) {
	l := api.LogLine{
		Timestamp: time.Date(2026, 11, 26, 11, 0, 0, 123, time.FixedZone("CET", 3600)),
		App:       "hello", Region: "iad", MachineID: "9a1b2c3d4e5f60", Stream: "stderr", Message: "GET / 200",
	}
	want := "2026-11-26T10:00:00Z hello[9a1b2c3d4e5f60] iad [info] GET / 200"
	if got := formatLogLine(l); got != want {
		t.Errorf("formatLogLine = %q, want %q", got, want)
	}
}
