// Package drivertest is the conformance suite every runtime driver passes:
// a driver's test calls Run with a constructor and an Env. The suite runs
// real machines from a root filesystem holding testapp, so it needs what
// the driver needs (usually root). Only tests import it.
//
// Conventions the suite checks beyond the interface's comments: a process
// killed by a signal exits with 128+signal; a stopped or exited machine can
// be started again and its logs are appended to; a machine's /etc/hosts
// names it on each of its addresses, replacing the image's; its
// /etc/resolv.conf is the image's unless Net.DNS is set; its /run is the
// image's, not an empty tmpfs; a non-root process binds ports below 1024
// (runc's CAP_NET_BIND_SERVICE); a driver made
// again over the same state (an agent restart) sees the machines the
// first one left running.
package drivertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

// Env is what the suite needs besides the driver.
type Env struct {
	// Rootfs is a root filesystem made by BuildRootfs.
	Rootfs string
	// Net returns a fresh network attachment whose address the test
	// process can reach.
	Net func(t *testing.T) runtime.Net
	// Net6 is Net with a 6PN address (Addr6) on the same bridge; nil
	// skips the IPv6 and DNS checks.
	Net6 func(t *testing.T) runtime.Net
	// MemoryLimit returns the memory limit in bytes that running machine
	// id is held to, as the host enforces it. Nil skips that check.
	MemoryLimit func(t *testing.T, id string) int64
	// Leftovers lists what of machine id remains on the host (mounts,
	// network, cgroups, files) after Destroy; nil skips that check.
	Leftovers func(t *testing.T, id string) []string
}

// Run runs the suite. newDriver may be called more than once in one
// (sub)test: every call in the same test must return a driver over the
// same state, as an agent restarted on the same host would make.
func Run(t *testing.T, newDriver func(t *testing.T) runtime.Driver, env Env) {
	s := &suite{newDriver: newDriver, env: env}
	tests := []struct {
		name string
		f    func(*testing.T)
	}{
		{"ServesOnItsAddress", s.servesOnItsAddress},
		{"Addr6AndDNS", s.addr6AndDNS},
		{"User", s.user},
		{"RunFromImage", s.runFromImage},
		{"LowPortAsNonRoot", s.lowPortAsNonRoot},
		{"ExitCodeAndLogs", s.exitCodeAndLogs},
		{"StopGracefully", s.stopGracefully},
		{"StopKillsAfterTimeout", s.stopKillsAfterTimeout},
		{"StopWithoutHandler", s.stopWithoutHandler},
		{"Signal", s.signal},
		{"Resources", s.resources},
		{"WritableLayerIsPrivate", s.writableLayerIsPrivate},
		{"Files", s.files}, // files.go
		{"SurvivesDriverRestart", s.survivesDriverRestart},
		{"CreateReplaces", s.createReplaces},
		{"UnknownMachine", s.unknownMachine},
		{"SuspendResume", s.suspendResume},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t)
		})
	}
}

type suite struct {
	newDriver func(t *testing.T) runtime.Driver
	env       Env
}

const port = "8080"

// spec is a machine running testapp with args and extra env.
func (s *suite) spec(t *testing.T, args []string, env ...string) runtime.Spec {
	t.Helper()
	b := make([]byte, 5)
	rand.Read(b)
	id := "dt" + hex.EncodeToString(b)
	return runtime.Spec{
		ID:     id,
		Rootfs: s.env.Rootfs,
		Process: runtime.Process{
			Args: append([]string{"/app"}, args...),
			// PORT first: tests may replace it.
			Env: append([]string{"PORT=" + port, "MESSAGE=hello from " + id}, env...),
		},
		Hostname: "h-" + id,
		Net:      s.env.Net(t),
		CPUs:     1,
		MemoryMB: 128,
	}
}

// create creates the machine and destroys it when the test ends.
func (s *suite) create(t *testing.T, d runtime.Driver, spec runtime.Spec) {
	t.Helper()
	if err := d.Create(ctx(t), spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range d.Logs(spec.ID) {
				if b, err := os.ReadFile(l.Path); err == nil {
					t.Logf("%s of %s:\n%s", l.Stream, spec.ID, b)
				}
			}
		}
		if err := d.Destroy(context.Background(), spec.ID); err != nil {
			t.Errorf("Destroy %s: %v", spec.ID, err)
		}
	})
}

func (s *suite) start(t *testing.T, d runtime.Driver, id string) {
	t.Helper()
	if err := d.Start(ctx(t), id); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

// ctx is bounded so a hung driver fails the test instead of the run.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// client never uses a proxy from the environment: machine addresses are
// local.
var client = &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}

// get requests path from the machine's server on its $PORT, retrying
// while it comes up.
func get(t *testing.T, spec runtime.Spec, method, path string) (int, string) {
	t.Helper()
	p := port
	for _, kv := range spec.Process.Env {
		if v, ok := strings.CutPrefix(kv, "PORT="); ok {
			p = v
		}
	}
	url := fmt.Sprintf("http://%s:%s%s", spec.Net.Addr.Addr(), p, path)
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, _ := http.NewRequest(method, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				return resp.StatusCode, string(body)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Info is testapp's answer to GET /.
type Info struct {
	Message  string   `json:"message"`
	UID      int      `json:"uid"`
	GID      int      `json:"gid"`
	Groups   []int    `json:"groups"`
	Cwd      string   `json:"cwd"`
	Hostname string   `json:"hostname"`
	Hosts    string   `json:"hosts"`
	Resolv   string   `json:"resolv"`
	Addrs    []string `json:"addrs"`
}

func info(t *testing.T, spec runtime.Spec) Info {
	t.Helper()
	code, body := get(t, spec, "GET", "/")
	var in Info
	if err := json.Unmarshal([]byte(body), &in); code != 200 || err != nil {
		t.Fatalf("GET /: %d %q (%v)", code, body, err)
	}
	return in
}

// readLog returns the machine's stream ("stdout" or "stderr").
func readLog(t *testing.T, d runtime.Driver, id, stream string) string {
	t.Helper()
	for _, l := range d.Logs(id) {
		if l.Stream == stream {
			b, err := os.ReadFile(l.Path)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
	t.Fatalf("Logs(%s) has no %s", id, stream)
	return ""
}

// waitLog waits until the machine's stream contains want.
func waitLog(t *testing.T, d runtime.Driver, id, stream, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readLog(t, d, id, stream), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s of %s never had %q; it has %q", stream, id, want, readLog(t, d, id, stream))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
