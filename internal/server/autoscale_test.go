package server

import (
	"context"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// TestAutoscaleSettingsAPI: settings are validated with clear errors,
// kept, shown and removed.
func TestAutoscaleSettingsAPI(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		set      api.AutoscaleSettings
		contains string
	}{
		{api.AutoscaleSettings{MinMachines: 7, MaxMachines: 6}, "min_machines (7) is above max_machines (6)"},
		{api.AutoscaleSettings{MaxMachines: 6, Regions: []string{"iad", "xyz"}}, `unknown region "xyz"`},
		{api.AutoscaleSettings{MaxMachines: 6, MaxPerRegion: -1}, "max_per_region must be 0 (no limit) or more, got -1"},
		{api.AutoscaleSettings{MaxMachines: -3}, "max_machines must be 0 or more, got -3"},
		{api.AutoscaleSettings{MaxMachines: 6, TargetUtilisation: 1.2}, "target_utilisation must be above 0 and at most 1"},
		{api.AutoscaleSettings{MaxMachines: 6, ScaleDownWindow: "-1m"}, "scale_down_window must not be negative"},
	} {
		_, err := s.c.SetAutoscale(ctx, "web", tc.set)
		wantStatus(t, err, 400, tc.contains)
	}
	_, err := s.c.SetAutoscale(ctx, "nope", api.AutoscaleSettings{MaxMachines: 2})
	wantStatus(t, err, 404, "nope")

	a, err := s.c.GetAutoscale(ctx, "web")
	if err != nil || a.Enabled {
		t.Fatalf("before set: %+v, %v; want disabled", a, err)
	}
	want := api.AutoscaleSettings{MinMachines: 1, MaxMachines: 6, Regions: []string{"iad", "syd"}, TargetUtilisation: 0.5, ScaleDownWindow: "20s"}
	if _, err := s.c.SetAutoscale(ctx, "web", want); err != nil {
		t.Fatal(err)
	}
	a, err = s.c.GetAutoscale(ctx, "web")
	if err != nil || !a.Enabled || a.Settings.MaxMachines != 6 || a.Settings.ScaleDownWindow != "20s" || len(a.Settings.Regions) != 2 {
		t.Fatalf("after set: %+v, %v", a, err)
	}
	if err := s.c.DisableAutoscale(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if a, err = s.c.GetAutoscale(ctx, "web"); err != nil || a.Enabled {
		t.Fatalf("after disable: %+v, %v", a, err)
	}
}
