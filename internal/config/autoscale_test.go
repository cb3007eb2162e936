package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func TestAutoscaleSection(t *testing.T) {
	opts := LoadOptions{Regions: []string{"iad", "syd", "fra", "gru"}}
	c, _, err := Parse("perch.toml", []byte(lines(
		"app = 'far'",
		"[autoscale]",
		"  min_machines = 1",
		"  max_machines = 6",
		"  max_per_region = 2",
		"  regions = ['iad', 'syd']",
		"  target_utilisation = 0.5",
		"  scale_down_window = '20s'",
	)), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := &api.AutoscaleSettings{MinMachines: 1, MaxMachines: 6, MaxPerRegion: 2, Regions: []string{"iad", "syd"}, TargetUtilisation: 0.5, ScaleDownWindow: "20s"}
	if d := cmp.Diff(want, c.Autoscale); d != "" {
		t.Errorf("[autoscale] (-want +got):\n%s", d)
	}

	for _, tc := range []struct{ name, data, want string }{
		{"min above max", lines("[autoscale]", "min_machines = 7", "max_machines = 6"), "perch.toml line 2: min_machines (7) is above max_machines (6)"},
		{"unknown region", lines("[autoscale]", "max_machines = 6", "regions = ['iad', 'xyz']"), `perch.toml line 3: unknown region "xyz"`},
		{"negative", lines("[autoscale]", "max_machines = 6", "max_per_region = -1"), "perch.toml line 3: max_per_region must be at least 0, got -1"},
		{"negative min", lines("[autoscale]", "max_machines = 6", "min_machines = -2"), "perch.toml line 3: min_machines must be at least 0, got -2"},
		{"target above 1", lines("[autoscale]", "max_machines = 6", "target_utilisation = 1.5"), "perch.toml line 3: target_utilisation must be above 0 and at most 1"},
		{"target zero", lines("[autoscale]", "max_machines = 6", "target_utilisation = 0"), "perch.toml line 3: target_utilisation must be above 0 and at most 1"},
		{"no max", lines("[autoscale]", "min_machines = 1"), "needs max_machines"},
		{"negative window", lines("[autoscale]", "max_machines = 6", "scale_down_window = '-5m'"), "perch.toml line 3: scale_down_window must not be negative"},
		{"min_machines_running above max", lines("[http_service]", "internal_port = 8080", "min_machines_running = 8", "[autoscale]", "max_machines = 6"),
			"perch.toml line 3: min_machines_running (8) is above [autoscale] max_machines (6)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse("perch.toml", []byte(tc.data), opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}
