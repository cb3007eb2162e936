package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// The file perch launch writes, exactly: a reader sees this first.
const launchFile = `# perch.toml: how Perch runs this app.
#
# The format is Fly.io's fly.toml (https://fly.io/docs/reference/configuration/),
# so the same file works with fly. Perch adds "regions": where perch deploy
# places machines. Keys Perch does not know yet are warned about and ignored.

app = 'hello'
primary_region = 'iad'
regions = ['iad', 'ams', 'sin']

[build]
  image = '127.0.0.1:4280/hello:v1'

[http_service]
  internal_port = 8080
  force_https = false

[[vm]]
  memory = '256mb'
  cpus = 1
`

func TestLaunchFile(t *testing.T) {
	c := New("hello", "127.0.0.1:4280/hello:v1", []string{"iad", "ams", "sin"})
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(launchFile, string(data)); diff != "" {
		t.Errorf("Marshal (-want +got):\n%s", diff)
	}
	back, warns, err := Parse("perch.toml", data, regions)
	if err != nil || len(warns) > 0 {
		t.Fatalf("Parse(Marshal) = %v, %v", warns, err)
	}
	if diff := cmp.Diff(c, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	want := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256, Runtime: "runc"}
	if diff := cmp.Diff(want, back.Guest()); diff != "" {
		t.Errorf("launch guest (-want +got):\n%s", diff)
	}
}

func TestRoundTrip(t *testing.T) {
	files, err := filepath.Glob("testdata/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, _, err := Load(f, regions)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, c)
		})
	}
	// Every field Marshal writes, including the forms Fly spells differently.
	roundTrip(t, &Config{
		App:         "all",
		KillSignal:  "SIGTERM",
		KillTimeout: 90*time.Second + 500*time.Millisecond,
		Env:         map[string]string{"A B": "quote \" and newline \n", "N": "1"},
		Processes:   map[string]string{"app": `sh -c 'exec app'`},
		HTTPService: &HTTPService{
			InternalPort: 80, AutoStopMachines: "suspend", AutoStartMachines: ptr(false),
			MinMachinesRunning: 2, Concurrency: &api.Concurrency{HardLimit: 10},
			TLSOptions:  &api.TLSOptions{ALPN: []string{"http/1.1"}, Versions: []string{"TLSv1.3"}},
			HTTPOptions: &api.HTTPOptions{H2Backend: true},
		},
		Services: []Service{{
			Protocol: "udp", InternalPort: 53, AutoStopMachines: "off",
			Ports: []api.Port{
				{Port: 53},
				{Port: 5353, Handlers: []string{"proxy_proto"}, ProxyProtoOptions: &api.ProxyProtoOptions{Version: "v2"}},
				{Port: 8443, Handlers: []string{"tls", "http"}, TLSOptions: &api.TLSOptions{Versions: []string{"TLSv1.2"}},
					HTTPOptions: &api.HTTPOptions{H2Backend: true}},
				{Port: 8080, Handlers: []string{"http"}, ForceHTTPS: true},
			},
		}},
		VMs:      []VM{{Size: "performance-1x", MemoryMB: 3000, Processes: []string{"app"}}, {CPUKind: "shared"}},
		Deploy:   Deploy{Strategy: "canary"},
		Restarts: []Restart{{Policy: api.RestartNo}, {Policy: api.RestartOnFailure, MaxRetries: 5, Processes: []string{"app"}}},
	})
}

func roundTrip(t *testing.T, c *Config) {
	t.Helper()
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, warns, err := Parse("perch.toml", data, LoadOptions{})
	if err != nil {
		t.Fatalf("Parse(Marshal) failed: %v\n%s", err, data)
	}
	// Marshal writes only keys Perch reads; it may still warn about what
	// they say (several process groups).
	for _, w := range warns {
		if strings.Contains(w.Msg, "ignored") {
			t.Errorf("Parse(Marshal) warned: %s", w)
		}
	}
	if diff := cmp.Diff(c, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s\nfile:\n%s", diff, data)
	}
}

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "perch.toml")
	if err := os.WriteFile(path, []byte("app = 'old'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := New("hello", "hello:v1", []string{"ams"})
	if err := c.Write(path); err != nil {
		t.Fatal(err)
	}
	back, _, err := Load(path, regions)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, back); diff != "" {
		t.Errorf("Load after Write (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("written file: %v, %v; want mode 0644", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("Write left %d files behind, want just perch.toml", len(entries))
	}
	if err := c.Write(filepath.Join(t.TempDir(), "missing", "perch.toml")); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}
