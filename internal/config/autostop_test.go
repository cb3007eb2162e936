package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// TestScaleToZeroReachesMachineConfig: Fly's auto_stop_machines,
// auto_start_machines and min_machines_running, and Perch's idle_timeout,
// become the API's services[].autostop, autostart, min_machines_running
// and idle_timeout, for [http_service] and [[services]] alike, and a file
// written back reads the same.
func TestScaleToZeroReachesMachineConfig(t *testing.T) {
	data := lines(
		"app = 'z'",
		"[http_service]",
		"  internal_port = 8080",
		"  auto_stop_machines = 'suspend'",
		"  auto_start_machines = true",
		"  min_machines_running = 1",
		"  idle_timeout = '30s'",
		"[[services]]",
		"  protocol = 'tcp'",
		"  internal_port = 6379",
		"  auto_stop_machines = true",
		"  idle_timeout = 90",
		"  [[services.ports]]",
		"    port = 6379",
	)
	c, warns, err := Parse("perch.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) > 0 {
		t.Errorf("warnings: %v", warns)
	}
	one, yes := 1, true
	type z struct {
		Autostop  api.Autostop
		Autostart *bool
		Min       *int
		Idle      string
		On        bool
	}
	var got []z
	for _, s := range c.MachineConfig("img").Services {
		got = append(got, z{s.Autostop, s.Autostart, s.MinMachinesRunning, s.IdleTimeout, s.AutostartOn()})
	}
	want := []z{
		{api.AutostopSuspend, &yes, &one, "30s", true},
		{api.AutostopStop, nil, nil, "1m30s", true},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("services (-want +got):\n%s", d)
	}
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := Parse("perch.toml", out, LoadOptions{})
	if err != nil {
		t.Fatalf("reading back:\n%s\n%v", out, err)
	}
	if d := cmp.Diff(c.MachineConfig("img"), again.MachineConfig("img")); d != "" {
		t.Errorf("written back (-first +again):\n%s", d)
	}
}

// TestIdleTimeoutWithoutAutostop: idle_timeout alone does nothing, and the
// file is told so.
func TestIdleTimeoutWithoutAutostop(t *testing.T) {
	_, warns, err := Parse("perch.toml", []byte(lines("[http_service]", "internal_port = 8080", "idle_timeout = '1m'")), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 1 || warns[0].Line != 3 {
		t.Fatalf("warnings %v; want one on line 3 about auto_stop_machines", warns)
	}
}
