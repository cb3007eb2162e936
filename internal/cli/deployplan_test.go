package cli

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

// machine is a test machine created `age` minutes after t0.
func machine(id, region, state string, minute int, release string) api.Machine {
	m := api.Machine{ID: id, Region: region, State: state, CreatedAt: t0.Add(time.Duration(minute) * time.Minute)}
	if release != "" {
		m.Config.Metadata = map[string]string{metaRelease: release}
	}
	return m
}

func TestPlanDeploy(t *testing.T) {
	tests := []struct {
		name       string
		existing   []api.Machine
		cfgRegions []string
		primary    string
		want       deployPlan
		wantErr    bool
	}{
		{
			name:       "first deploy creates one machine per region, primary first",
			cfgRegions: []string{"ams", "iad", "sin"},
			primary:    "iad",
			want:       deployPlan{Steps: []deployStep{{Group: "app", Region: "iad"}, {Group: "app", Region: "ams"}, {Group: "app", Region: "sin"}}},
		},
		{
			name:    "no regions in config and no machines: primary region",
			primary: "ams",
			want:    deployPlan{Steps: []deployStep{{Group: "app", Region: "ams"}}},
		},
		{
			name: "no regions in config: the regions machines are in, oldest machine first",
			existing: []api.Machine{
				machine("b2", "sin", api.StateStarted, 5, "v1"),
				machine("a2", "iad", api.StateStarted, 3, "v1"),
				machine("a1", "iad", api.StateStopped, 1, "v1"),
			},
			primary: "iad",
			want: deployPlan{Steps: []deployStep{
				{Group: "app", Region: "iad", Replace: "a1"}, {Group: "app", Region: "iad", Replace: "a2"}, {Group: "app", Region: "sin", Replace: "b2"},
			}},
		},
		{
			name: "a region dropped from the config keeps its machines; a new one gets one",
			existing: []api.Machine{
				machine("a1", "iad", api.StateStarted, 1, "v1"),
				machine("f1", "fra", api.StateStarted, 1, "v1"),
				machine("f2", "fra", api.StateFailed, 2, "v1"),
			},
			cfgRegions: []string{"iad", "ams"},
			primary:    "iad",
			want: deployPlan{
				Steps: []deployStep{{Group: "app", Region: "iad", Replace: "a1"}, {Group: "app", Region: "ams"}},
				Kept:  []regionCount{{"fra", 2}},
			},
		},
		{
			name: "machines on their way out are not replaced",
			existing: []api.Machine{
				machine("a1", "iad", api.StateDestroying, 1, "v1"),
				machine("a2", "iad", api.StateDestroyed, 1, "v1"),
				machine("a3", "iad", api.StateFailed, 2, "v1"),
			},
			primary: "iad",
			want:    deployPlan{Steps: []deployStep{{Group: "app", Region: "iad", Replace: "a3"}}},
		},
		{
			name:    "nowhere to deploy",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := planDeploy(tt.existing, tt.cfgRegions, tt.primary, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNextRelease(t *testing.T) {
	tests := []struct {
		existing []api.Machine
		want     string
	}{
		{nil, "v1"},
		{[]api.Machine{machine("a", "iad", "", 0, "")}, "v1"},
		{[]api.Machine{
			machine("a", "iad", "", 0, "v2"),
			machine("b", "iad", "", 0, "v10"),
			machine("c", "iad", "", 0, "bogus"),
		}, "v11"},
	}
	for _, tt := range tests {
		if got := nextRelease(tt.existing); got != tt.want {
			t.Errorf("nextRelease(%d machines) = %q, want %q", len(tt.existing), got, tt.want)
		}
	}
}

func TestWithRelease(t *testing.T) {
	base := api.MachineConfig{Image: "reg/app:1", Metadata: map[string]string{"team": "web"}}
	got := withRelease(base, "v3")
	if diff := cmp.Diff(map[string]string{"team": "web"}, base.Metadata); diff != "" {
		t.Errorf("withRelease changed its argument's metadata (-want +got):\n%s", diff)
	}
	if got.Metadata[metaRelease] != "v3" || got.Metadata["team"] != "web" {
		t.Errorf("metadata = %v, want perch_release v3 and team kept", got.Metadata)
	}
	// The hash follows the config, not the release.
	if again := withRelease(got, "v4"); again.Metadata[metaConfig] != got.Metadata[metaConfig] {
		t.Errorf("same config, different hash: %q vs %q", again.Metadata[metaConfig], got.Metadata[metaConfig])
	}
	other := base
	other.Image = "reg/app:2"
	if withRelease(other, "v3").Metadata[metaConfig] == got.Metadata[metaConfig] {
		t.Error("a different image gave the same config hash")
	}
}

// A fly.toml without primary_region still deploys: --region says where,
// else the app's regions; with neither, the error says what to pass.
func TestDeployWithoutPrimaryRegion(t *testing.T) {
	regions, primary := flagRegions([]string{"ams", "iad"}, nil, "")
	if diff := cmp.Diff([]string{"ams", "iad"}, regions); diff != "" || primary != "ams" {
		t.Errorf("--region ams,iad: regions %v primary %q, want [ams iad] and ams (-want +got):\n%s", regions, primary, diff)
	}
	if _, primary := flagRegions([]string{"ams", "iad"}, []string{"sin"}, "iad"); primary != "iad" {
		t.Errorf("--region ams,iad with primary_region iad: primary %q, want iad", primary)
	}
	if regions, primary := flagRegions(nil, []string{"sin"}, "sin"); !cmp.Equal(regions, []string{"sin"}) || primary != "sin" {
		t.Errorf("no --region: %v %q, want perch.toml's", regions, primary)
	}

	_, err := planDeploy(nil, nil, "", nil)
	if err == nil || err.Error() != "no region to deploy to: pass --region (e.g. --region iad; `perch regions` lists them), or set primary_region in perch.toml" {
		t.Errorf("no region at all: %v", err)
	}

	// The app's existing regions; the first becomes every machine's
	// PRIMARY_REGION, unless perch.toml set one.
	p, err := planDeploy([]api.Machine{machine("a1", "sin", api.StateStarted, 1, "v1"), machine("b1", "ams", api.StateStarted, 2, "v1")}, nil, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	mc := withPrimaryRegion(api.MachineConfig{Env: map[string]string{"X": "1"}}, p)
	if mc.Env["PRIMARY_REGION"] != "ams" || mc.Env["X"] != "1" {
		t.Errorf("env = %v, want PRIMARY_REGION=ams beside X=1", mc.Env)
	}
	mc = withPrimaryRegion(api.MachineConfig{Env: map[string]string{"PRIMARY_REGION": "sin"}}, p)
	if mc.Env["PRIMARY_REGION"] != "sin" {
		t.Errorf("env = %v, want perch.toml's PRIMARY_REGION=sin kept", mc.Env)
	}
}
