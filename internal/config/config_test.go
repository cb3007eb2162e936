package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/perchhq/perch/internal/api"
)

// regions is a small world for tests; production passes geo's codes.
var regions = LoadOptions{Regions: []string{"ams", "cdg", "iad", "lhr", "sin"}}

func ptr[T any](v T) *T { return &v }

// warnings renders warnings as the CLI prints them, which is what a user
// reads, so tests compare those.
func warnings(ws []Warning) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.String())
	}
	return out
}

func TestParseFlyFiles(t *testing.T) {
	for _, tc := range []struct {
		file  string
		want  *Config
		warns []string
	}{
		{
			file: "go-app.fly.toml",
			want: &Config{
				App:           "hello-go",
				PrimaryRegion: "ams",
				Env:           map[string]string{"PORT": "8080"},
				HTTPService: &HTTPService{
					InternalPort: 8080, ForceHTTPS: true,
					AutoStopMachines: "stop", AutoStartMachines: ptr(true),
					Processes: []string{"app"},
				},
				VMs:   []VM{{MemoryMB: 1024, CPUKind: "shared", CPUs: 1}},
				Build: Build{Args: map[string]string{"GO_VERSION": "1.22.3"}},
			},
		},
		{
			file: "rails.fly.toml",
			want: &Config{
				App:           "blog-rails",
				Deploy:        Deploy{ReleaseCommand: []string{"./bin/rails", "db:prepare"}},
				PrimaryRegion: "iad",
				Processes: map[string]string{
					"app":    "./bin/rails server -b '0.0.0.0'",
					"worker": "bundle exec sidekiq",
				},
				HTTPService: &HTTPService{
					InternalPort: 3000, ForceHTTPS: true,
					AutoStopMachines: "stop", AutoStartMachines: ptr(true),
					Processes: []string{"app"},
				},
				VMs: []VM{
					{CPUKind: "shared", CPUs: 1, MemoryMB: 1024, Processes: []string{"app"}},
					{Size: "shared-cpu-2x", Processes: []string{"worker"}},
				},
				Statics: []api.Static{{GuestPath: "/rails/public", URLPrefix: "/"}},
			},
			warns: []string{
				`rails.fly.toml line 8: "console_command" ignored: perch has no console command (no fly ssh console)`,
			},
		},
		{
			file: "legacy-v1.fly.toml",
			want: &Config{
				App:         "old-api",
				KillSignal:  "SIGINT",
				KillTimeout: 5 * time.Second,
				Services: []Service{{
					Protocol:     "tcp",
					InternalPort: 8080,
					Processes:    []string{"app"},
					Concurrency:  &api.Concurrency{Type: "connections", SoftLimit: 20, HardLimit: 25},
					Ports: []api.Port{
						{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
						{Port: 443, Handlers: []string{"tls", "http"}},
					},
					Checks: []api.Check{{Type: "tcp", Interval: "15s", Timeout: "2s", GracePeriod: "1s"}},
				}},
			},
		},
		{
			file: "chat.fly.toml",
			want: &Config{
				App:           "chat-ws",
				PrimaryRegion: "sin",
				KillSignal:    "SIGTERM",
				KillTimeout:   30 * time.Second,
				Build:         Build{Image: "ghcr.io/acme/chat-ws:1.4.2"},
				Deploy:        Deploy{Strategy: "rolling"},
				Env:           map[string]string{"LOG_LEVEL": "info", "MAX_ROOMS": "500"},
				HTTPService: &HTTPService{
					InternalPort: 4000, ForceHTTPS: true,
					AutoStopMachines: "stop", AutoStartMachines: ptr(true), MinMachinesRunning: 1,
					Processes:   []string{"app"},
					Concurrency: &api.Concurrency{Type: "requests", SoftLimit: 200, HardLimit: 250},
					Checks:      []api.Check{{Type: "http", Interval: "30s", Timeout: "5s", GracePeriod: "10s", Method: "GET", Path: "/healthz"}},
				},
				Services: []Service{{
					Protocol: "tcp", InternalPort: 4001, Processes: []string{"app"},
					Ports: []api.Port{{Port: 4001, Handlers: []string{"proxy_proto"}}},
				}},
				Restarts: []Restart{{Policy: "always", MaxRetries: 3}},
				VMs:      []VM{{Size: "performance-2x"}},
				Mounts:   []Mount{{Source: "chat_data", Destination: "/data"}},
			},
		},
		{
			file: "perch.toml",
			want: &Config{
				App:           "edge-echo",
				PrimaryRegion: "iad",
				Regions:       []string{"iad", "ams", "sin"},
				Build:         Build{Image: "127.0.0.1:4280/edge-echo:latest"},
				Env:           map[string]string{"GREETING": "hello from perch"},
				HTTPService:   &HTTPService{InternalPort: 8080},
				VMs:           []VM{{MemoryMB: 512, CPUs: 2, Runtime: "microvm"}},
			},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			c, warns, err := Load(filepath.Join("testdata", tc.file), regions)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if diff := cmp.Diff(tc.want, c); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
			// Load names the file by the path it was given.
			want := make([]string, len(tc.warns))
			for i, w := range tc.warns {
				want[i] = "testdata/" + w
			}
			if diff := cmp.Diff(want, warnings(warns), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, _, err := Load(filepath.Join(t.TempDir(), "perch.toml"), LoadOptions{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file = %v, want ErrNotExist", err)
	}
}

func TestDeployRegions(t *testing.T) {
	for _, tc := range []struct {
		c    Config
		want []string
	}{
		{Config{Regions: []string{"ams", "sin"}, PrimaryRegion: "ams"}, []string{"ams", "sin"}},
		{Config{PrimaryRegion: "iad"}, []string{"iad"}},
		{Config{}, nil},
	} {
		if diff := cmp.Diff(tc.want, tc.c.DeployRegions()); diff != "" {
			t.Errorf("DeployRegions of %+v (-want +got):\n%s", tc.c, diff)
		}
	}
}
