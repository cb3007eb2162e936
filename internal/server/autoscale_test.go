package server

import (
	"context"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
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

// TestAutoscaleAddsMachinesWithVolumes: the autoscaler copies a machine
// that mounts a volume. Each machine it adds gets a volume of its own, as
// fly scale count gives one (same name, size and snapshot settings, in
// the new machine's region), instead of failing on the template's volume
// being attached; a volume a removed machine left free is taken again
// before a new one is made.
func TestAutoscaleAddsMachinesWithVolumes(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "db"}); err != nil {
		t.Fatal(err)
	}
	volumeHost(t, s, "iad", 20<<30)
	keep := 3
	v, err := s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg_data", Region: "iad", SizeGB: 2, SnapshotRetention: &keep})
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := s.c.CreateMachine(ctx, "db", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Mounts: []api.Mount{{Volume: v.ID, Path: "/data"}}}})
	if err != nil {
		t.Fatal(err)
	}
	cl := cluster{s.Server}
	var added []api.Machine
	for range 2 {
		m, err := cl.CreateMachine(ctx, "db", "iad", tmpl.Config)
		if err != nil {
			t.Fatalf("autoscaler's create of a machine like %s (volume %s): %v", tmpl.ID, v.ID, err)
		}
		added = append(added, m)
	}
	vols, err := s.c.ListVolumes(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 3 {
		t.Fatalf("%d volumes after two machines were added, want 3 (one each): %+v", len(vols), vols)
	}
	owner := map[string]string{}
	for _, vol := range vols {
		if vol.Name != "pg_data" || vol.SizeGB != 2 || vol.Region != "iad" || vol.SnapshotRetention != 3 || vol.AttachedMachineID == nil {
			t.Errorf("volume %+v; want pg_data, 2 GB, iad, 3 days of snapshots, attached", vol)
			continue
		}
		owner[*vol.AttachedMachineID] = vol.ID
	}
	for _, m := range append(added, *tmpl) {
		if len(m.Config.Mounts) != 1 || owner[m.ID] != m.Config.Mounts[0].Volume || m.Config.Mounts[0].Path != "/data" {
			t.Errorf("machine %s mounts %+v; volumes by machine %v", m.ID, m.Config.Mounts, owner)
		}
	}

	// The autoscaler removes one; once its host has destroyed it (as the
	// host does, the spec goes), its volume is free and the next add
	// takes it rather than making a fourth.
	gone := added[1]
	if err := cl.DestroyMachine(ctx, "db", gone.ID); err != nil {
		t.Fatal(err)
	}
	if err := store.Delete(ctx, s.st.Machines, store.MachineKey("db", gone.ID)); err != nil {
		t.Fatal(err)
	}
	again, err := cl.CreateMachine(ctx, "db", "iad", tmpl.Config)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.Config.Mounts[0].Volume; got != gone.Config.Mounts[0].Volume {
		t.Errorf("re-added machine mounts %s, want the freed volume %s", got, gone.Config.Mounts[0].Volume)
	}
	if vols, _ := s.c.ListVolumes(ctx, "db"); len(vols) != 3 {
		t.Errorf("%d volumes after a remove and an add, want still 3", len(vols))
	}
}
