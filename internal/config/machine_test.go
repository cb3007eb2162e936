package config

import (
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func load(t *testing.T, file string) *Config {
	t.Helper()
	c, _, err := Load(filepath.Join("testdata", file), regions)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var webPorts = []api.Port{
	{Port: 80, Handlers: []string{"http"}},
	{Port: 443, Handlers: []string{"tls", "http"}},
}

// Fly's defaults for a service that sets no concurrency, and the metadata of
// the "app" group.
var (
	defaultConcurrency = &api.Concurrency{Type: "connections", SoftLimit: 20}
	appGroup           = map[string]string{"fly_process_group": "app"}
)

func TestMachineConfig(t *testing.T) {
	yes, one := true, 1
	for _, tc := range []struct {
		file, image string
		want        api.MachineConfig
	}{
		{
			file:  "perch.toml",
			image: "", // falls back to [build] image
			want: api.MachineConfig{
				Image:    "127.0.0.1:4280/edge-echo:latest",
				Env:      map[string]string{"GREETING": "hello from perch", "FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "iad"},
				Guest:    api.Guest{CPUKind: "shared", CPUs: 2, MemoryMB: 512, Runtime: "microvm"},
				Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: webPorts, Concurrency: defaultConcurrency}},
				Restart:  api.Restart{Policy: api.RestartOnFailure},
				Metadata: appGroup,
			},
		},
		{
			file:  "go-app.fly.toml",
			image: "127.0.0.1:4280/hello-go@sha256:0123",
			want: api.MachineConfig{
				Image: "127.0.0.1:4280/hello-go@sha256:0123",
				Env:   map[string]string{"PORT": "8080", "FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "ams"},
				Guest: api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 1024, Runtime: "runc"},
				Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{
					{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
					{Port: 443, Handlers: []string{"tls", "http"}},
				}, Concurrency: defaultConcurrency, Autostop: api.AutostopStop, Autostart: &yes}},
				Restart:  api.Restart{Policy: api.RestartOnFailure},
				Metadata: appGroup,
			},
		},
		{
			file:  "chat.fly.toml",
			image: "",
			want: api.MachineConfig{
				Image:  "ghcr.io/acme/chat-ws:1.4.2",
				Mounts: []api.Mount{{Name: "chat_data", Path: "/data"}},
				Env:    map[string]string{"LOG_LEVEL": "info", "MAX_ROOMS": "500", "FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "sin"},
				Guest:  api.Guest{CPUKind: "performance", CPUs: 2, MemoryMB: 4096, Runtime: "runc"},
				Services: []api.Service{
					{
						Protocol: "tcp", InternalPort: 4000,
						Ports: []api.Port{
							{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
							{Port: 443, Handlers: []string{"tls", "http"}},
						},
						Concurrency: &api.Concurrency{Type: "requests", SoftLimit: 200, HardLimit: 250},
						Checks:      []api.Check{{Type: "http", Port: 4000, Interval: "30s", Timeout: "5s", GracePeriod: "10s", Method: "GET", Path: "/healthz"}},
						Autostop:    api.AutostopStop, Autostart: &yes, MinMachinesRunning: &one,
					},
					{Protocol: "tcp", InternalPort: 4001, Ports: []api.Port{{Port: 4001, Handlers: []string{"proxy_proto"}}}, Concurrency: defaultConcurrency},
				},
				Restart:    api.Restart{Policy: api.RestartAlways, MaxRetries: 3},
				Metadata:   appGroup,
				StopConfig: &api.StopConfig{Timeout: "30s", Signal: "SIGTERM"},
			},
		},
		{
			// Perch runs the "app" group: its command, its VM, its service.
			file:  "rails.fly.toml",
			image: "registry.example/blog:v7",
			want: api.MachineConfig{
				Image: "registry.example/blog:v7",
				Env:   map[string]string{"FLY_PROCESS_GROUP": "app", "PRIMARY_REGION": "iad"},
				Guest: api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 1024, Runtime: "runc"},
				Services: []api.Service{{Protocol: "tcp", InternalPort: 3000, Ports: []api.Port{
					{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
					{Port: 443, Handlers: []string{"tls", "http"}},
				}, Concurrency: defaultConcurrency, Autostop: api.AutostopStop, Autostart: &yes}},
				Restart:  api.Restart{Policy: api.RestartOnFailure},
				Init:     api.MachineInit{Cmd: []string{"./bin/rails", "server", "-b", "0.0.0.0"}},
				Metadata: appGroup,
				Statics:  []api.Static{{GuestPath: "/rails/public", URLPrefix: "/"}},
			},
		},
		{
			file:  "legacy-v1.fly.toml",
			image: "old-api:latest",
			want: api.MachineConfig{
				Image: "old-api:latest",
				Env:   map[string]string{"FLY_PROCESS_GROUP": "app"},
				Guest: api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256, Runtime: "runc"},
				Services: []api.Service{{
					Protocol: "tcp", InternalPort: 8080,
					Ports: []api.Port{
						{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
						{Port: 443, Handlers: []string{"tls", "http"}},
					},
					Concurrency: &api.Concurrency{Type: "connections", SoftLimit: 20, HardLimit: 25},
					Checks:      []api.Check{{Type: "tcp", Port: 8080, Interval: "15s", Timeout: "2s", GracePeriod: "1s"}},
				}},
				Restart:    api.Restart{Policy: api.RestartOnFailure},
				Metadata:   appGroup,
				StopConfig: &api.StopConfig{Timeout: "5s", Signal: "SIGINT"},
			},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			c := load(t, tc.file)
			got := c.MachineConfig(tc.image)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("MachineConfig (-want +got):\n%s", diff)
			}
			// The machine config is the caller's to change.
			if got.Env != nil {
				got.Env["CHANGED"] = "1"
				if _, ok := c.Env["CHANGED"]; ok {
					t.Error("changing the machine config's env changed the Config")
				}
			}
		})
	}
}

func TestServicesOfOtherProcessGroupsAreLeftOut(t *testing.T) {
	c, _, err := Parse("fly.toml", []byte(lines(
		"[processes]",
		"  web = 'bin/web'",
		"  worker = 'bin/worker'",
		"[http_service]",
		"  internal_port = 8080",
		"  processes = ['web']",
		"[[services]]",
		"  protocol = 'tcp'",
		"  internal_port = 9000",
		"  processes = ['worker']",
		"  ports = [{ port = 9000 }]",
		"[[vm]]",
		"  size = 'shared-cpu-4x'",
		"  processes = ['worker']",
		"[[vm]]",
		"  size = 'shared-cpu-2x'",
	)), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if g := c.ProcessGroup(); g != "web" {
		t.Fatalf("ProcessGroup = %q, want web (the first by name, with no app group)", g)
	}
	mc := c.MachineConfig("img")
	want := api.MachineConfig{
		Image:    "img",
		Env:      map[string]string{"FLY_PROCESS_GROUP": "web"},
		Guest:    api.Guest{CPUKind: "shared", CPUs: 2, MemoryMB: 512, Runtime: "runc"},
		Services: []api.Service{{Protocol: "tcp", InternalPort: 8080, Ports: webPorts, Concurrency: defaultConcurrency}},
		Restart:  api.Restart{Policy: api.RestartOnFailure},
		Init:     api.MachineInit{Cmd: []string{"bin/web"}},
		Metadata: map[string]string{"fly_process_group": "web"},
	}
	if diff := cmp.Diff(want, mc); diff != "" {
		t.Errorf("MachineConfig (-want +got):\n%s", diff)
	}
}

func TestGuest(t *testing.T) {
	for _, tc := range []struct {
		vm   VM
		want api.Guest
	}{
		{VM{}, api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256, Runtime: "runc"}},
		{VM{Size: "shared-cpu-1x"}, api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256, Runtime: "runc"}},
		{VM{Size: "shared-cpu-2x"}, api.Guest{CPUKind: "shared", CPUs: 2, MemoryMB: 512, Runtime: "runc"}},
		{VM{Size: "shared-cpu-4x"}, api.Guest{CPUKind: "shared", CPUs: 4, MemoryMB: 1024, Runtime: "runc"}},
		{VM{Size: "shared-cpu-8x"}, api.Guest{CPUKind: "shared", CPUs: 8, MemoryMB: 2048, Runtime: "runc"}},
		{VM{Size: "performance-1x"}, api.Guest{CPUKind: "performance", CPUs: 1, MemoryMB: 2048, Runtime: "runc"}},
		{VM{Size: "performance-2x"}, api.Guest{CPUKind: "performance", CPUs: 2, MemoryMB: 4096, Runtime: "runc"}},
		{VM{Size: "performance-4x"}, api.Guest{CPUKind: "performance", CPUs: 4, MemoryMB: 8192, Runtime: "runc"}},
		{VM{Size: "performance-8x"}, api.Guest{CPUKind: "performance", CPUs: 8, MemoryMB: 16384, Runtime: "runc"}},
		// Explicit memory wins over the size's.
		{VM{Size: "shared-cpu-2x", MemoryMB: 2048}, api.Guest{CPUKind: "shared", CPUs: 2, MemoryMB: 2048, Runtime: "runc"}},
		// CPUs without memory: the default memory for that many CPUs.
		{VM{CPUs: 4}, api.Guest{CPUKind: "shared", CPUs: 4, MemoryMB: 1024, Runtime: "runc"}},
		{VM{CPUKind: "performance", CPUs: 2}, api.Guest{CPUKind: "performance", CPUs: 2, MemoryMB: 4096, Runtime: "runc"}},
		{VM{MemoryMB: 128, Runtime: "microvm"}, api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 128, Runtime: "microvm"}},
	} {
		if diff := cmp.Diff(tc.want, tc.vm.Guest()); diff != "" {
			t.Errorf("%+v.Guest() (-want +got):\n%s", tc.vm, diff)
		}
	}
}

func TestMemoryForms(t *testing.T) {
	for _, tc := range []struct {
		toml string
		mb   int
	}{
		{`"512mb"`, 512},
		{`"1gb"`, 1024},
		{`"1024"`, 1024},
		{`1024`, 1024},
		{`"2GB"`, 2048},
		{`"1.5gb"`, 1536},
		{`"256 MB"`, 256},
		{`"512m"`, 512},
		{`"4g"`, 4096},
		{`"1GiB"`, 1024},
		{`"524288kb"`, 512},
	} {
		c, _, err := Parse("perch.toml", []byte("[[vm]]\nmemory = "+tc.toml+"\n"), LoadOptions{})
		if err != nil {
			t.Errorf("memory = %s: %v", tc.toml, err)
			continue
		}
		if got := c.VMs[0].MemoryMB; got != tc.mb {
			t.Errorf("memory = %s is %d MB, want %d", tc.toml, got, tc.mb)
		}
	}
	for _, bad := range []string{"lots", "", "0mb", "1.3mb", "-1gb", "gb", "1..2gb", "12 parsecs", "1e3mb"} {
		if mb, ok := parseMemory(bad); ok {
			t.Errorf("parseMemory(%q) = %d, want it refused", bad, mb)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"bin/server", []string{"bin/server"}},
		{"  bundle   exec sidekiq ", []string{"bundle", "exec", "sidekiq"}},
		{`sh -c 'echo "$PORT" && exec app'`, []string{"sh", "-c", `echo "$PORT" && exec app`}},
		{`app --name "a \"b\" c" x\ y`, []string{"app", "--name", `a "b" c`, "x y"}},
		{`app ""`, []string{"app", ""}},
	} {
		got, err := splitCommand(tc.cmd)
		if err != nil {
			t.Errorf("splitCommand(%q): %v", tc.cmd, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("splitCommand(%q) (-want +got):\n%s", tc.cmd, diff)
		}
	}
	for _, bad := range []string{"", "  ", `a "b`, "a 'b", `a \`} {
		if got, err := splitCommand(bad); err == nil {
			t.Errorf("splitCommand(%q) = %q, want an error", bad, got)
		}
	}
}
