package autoscale

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func settings(max int) Settings {
	return Resolve(api.AutoscaleSettings{MaxMachines: max}, []string{"fra", "gru", "iad", "syd"}, 0)
}

func TestDecide(t *testing.T) {
	per := DefaultTarget * DefaultSoftLimit // 14 in flight per machine
	tests := []struct {
		name     string
		settings Settings
		demand   map[string]Demand
		machines map[string]Count
		history  []Recommendation
		want     map[string]int
	}{
		{
			name:     "demand where there is no machine adds one there",
			settings: settings(6),
			demand:   map[string]Demand{"syd": {RPS: 40, Concurrency: 3, LatencyMS: 236, ServedBy: map[string]float64{"iad": 1}}},
			machines: map[string]Count{"iad": {Total: 1, Started: 1}},
			want:     map[string]int{"iad": 1, "syd": 1},
		},
		{
			name:     "count follows ceil(concurrency / (target × soft limit))",
			settings: settings(10),
			demand:   map[string]Demand{"fra": {RPS: 400, Concurrency: 3*per + 1}},
			machines: map[string]Count{"fra": {Total: 1, Started: 1, Owned: 1}},
			want:     map[string]int{"fra": 4},
		},
		{
			name:     "within the tolerance the count stays",
			settings: settings(10),
			demand:   map[string]Demand{"fra": {RPS: 400, Concurrency: 2 * per * 1.08}},
			machines: map[string]Count{"fra": {Total: 2, Started: 2, Owned: 2}},
			want:     map[string]int{"fra": 2},
		},
		{
			name:     "at max, machines go to the regions with the most unserved demand",
			settings: settings(4),
			demand: map[string]Demand{
				"syd": {RPS: 300, Concurrency: 30},
				"fra": {RPS: 50, Concurrency: 5},
				"gru": {RPS: 10, Concurrency: 1},
			},
			machines: map[string]Count{"iad": {Total: 1, Started: 1}},
			want:     map[string]int{"iad": 1, "syd": 2, "fra": 1, "gru": 0},
		},
		{
			name:     "max_per_region caps a region",
			settings: func() Settings { s := settings(10); s.MaxPerRegion = 2; return s }(),
			demand:   map[string]Demand{"syd": {RPS: 900, Concurrency: 90}},
			machines: map[string]Count{},
			want:     map[string]int{"syd": 2},
		},
		{
			name:     "stopped machines count as capacity: none is created",
			settings: settings(6),
			demand:   map[string]Demand{"syd": {RPS: 5, Concurrency: 0.5}},
			machines: map[string]Count{"iad": {Total: 1, Started: 1}, "syd": {Total: 1, Started: 0, Owned: 1}},
			want:     map[string]int{"iad": 1, "syd": 1},
		},
		{
			name:     "no demand: scale down waits for the window",
			settings: settings(6),
			machines: map[string]Count{"iad": {Total: 1, Started: 1}, "syd": {Total: 1, Started: 1, Owned: 1}},
			history:  []Recommendation{{At: t0.Add(-time.Minute), Desired: map[string]int{"iad": 1, "syd": 1}}},
			want:     map[string]int{"iad": 1, "syd": 1},
		},
		{
			name:     "no demand for longer than the window: owned machines go, the user's stay",
			settings: settings(6),
			machines: map[string]Count{"iad": {Total: 1, Started: 1}, "syd": {Total: 2, Started: 2, Owned: 2}},
			history:  []Recommendation{{At: t0.Add(-6 * time.Minute), Desired: map[string]int{"iad": 1, "syd": 2}}},
			want:     map[string]int{"iad": 1, "syd": 0},
		},
		{
			name:     "scale down to the highest recommendation in the window",
			settings: settings(10),
			demand:   map[string]Demand{"fra": {RPS: 10, Concurrency: 1}},
			machines: map[string]Count{"fra": {Total: 4, Started: 4, Owned: 4}},
			history: []Recommendation{
				{At: t0.Add(-10 * time.Minute), Desired: map[string]int{"fra": 4}},
				{At: t0.Add(-2 * time.Minute), Desired: map[string]int{"fra": 2}},
			},
			want: map[string]int{"fra": 2},
		},
		{
			name:     "min_machines holds even with no demand",
			settings: func() Settings { s := settings(6); s.Min = 2; return s }(),
			machines: map[string]Count{"iad": {Total: 1, Started: 1}},
			want:     map[string]int{"iad": 2},
		},
		{
			name:     "demand from a region not allowed goes to the nearest allowed one",
			settings: Resolve(api.AutoscaleSettings{MaxMachines: 6, Regions: []string{"iad", "fra"}}, nil, 0),
			demand:   map[string]Demand{"gru": {RPS: 300, Concurrency: 20}},
			machines: map[string]Count{"iad": {Total: 1, Started: 1}},
			want:     map[string]int{"iad": 2, "gru": 0},
		},
		{
			name:     "held machines count against max: the scale-up waits",
			settings: settings(2),
			demand:   map[string]Demand{"fra": {RPS: 10, Concurrency: 1}},
			machines: map[string]Count{"iad": {Total: 1, Started: 1}, "syd": {Total: 1, Started: 1, Owned: 1}},
			history:  []Recommendation{{At: t0.Add(-time.Minute), Desired: map[string]int{"iad": 1, "syd": 1}}},
			want:     map[string]int{"iad": 1, "syd": 1, "fra": 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := Decide(Input{
				Now: t0, Settings: tt.settings, Demand: tt.demand, Machines: tt.machines, History: tt.history,
				Nearest: func(string, []string) string { return "iad" },
			})
			got := map[string]int{}
			for r := range tt.want {
				got[r] = out.Desired[r]
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("desired counts (-want +got):\n%s\nchanges: %+v", d, out.Changes)
			}
			for _, c := range out.Changes {
				if c.To != out.Desired[c.Region] || c.From != tt.machines[c.Region].Total {
					t.Errorf("change %+v does not match desired %d", c, out.Desired[c.Region])
				}
			}
		})
	}
}

func TestDecideExplains(t *testing.T) {
	out := Decide(Input{
		Now: t0, Settings: settings(6),
		Demand:   map[string]Demand{"syd": {RPS: 41, Concurrency: 9.6, LatencyMS: 236, ServedBy: map[string]float64{"iad": 1}}},
		Machines: map[string]Count{"iad": {Total: 1, Started: 1}},
	})
	if len(out.Changes) != 1 {
		t.Fatalf("want one change, got %+v", out.Changes)
	}
	got := out.Changes[0].Reason
	for _, want := range []string{"syd: 41 req/s", "from the syd edge", "0 machines", "served from iad at 236 ms", "→ +1 machine in syd"} {
		if !strings.Contains(got, want) {
			t.Errorf("explanation %q lacks %q", got, want)
		}
	}
}

func TestValidate(t *testing.T) {
	known := func(r string) bool { return r == "iad" || r == "syd" }
	tests := []struct {
		s    api.AutoscaleSettings
		want string // "" = valid
	}{
		{api.AutoscaleSettings{MaxMachines: 6}, ""},
		{api.AutoscaleSettings{MinMachines: 1, MaxMachines: 6, Regions: []string{"iad", "syd"}, TargetUtilisation: 1, ScaleDownWindow: "20s"}, ""},
		{api.AutoscaleSettings{MinMachines: 7, MaxMachines: 6}, "min_machines (7) is above max_machines (6)"},
		{api.AutoscaleSettings{MaxMachines: 6, Regions: []string{"xyz"}}, `unknown region "xyz"`},
		{api.AutoscaleSettings{MinMachines: -1, MaxMachines: 6}, "min_machines must be 0 or more, got -1"},
		{api.AutoscaleSettings{MaxMachines: 6, MaxPerRegion: -2}, "max_per_region must be 0 (no limit) or more, got -2"},
		{api.AutoscaleSettings{MaxMachines: 6, TargetUtilisation: 1.5}, "target_utilisation must be above 0 and at most 1"},
		{api.AutoscaleSettings{MaxMachines: 6, TargetUtilisation: -0.1}, "target_utilisation must be above 0 and at most 1"},
		{api.AutoscaleSettings{MaxMachines: 6, ScaleDownWindow: "-5m"}, "scale_down_window must not be negative"},
		{api.AutoscaleSettings{MaxMachines: 6, ScaleDownWindow: "soon"}, `scale_down_window must be a duration like "5m"`},
		{api.AutoscaleSettings{}, "max_machines is required"},
	}
	for _, tt := range tests {
		err := Validate(tt.s, known)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%+v: unexpected error %v", tt.s, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%+v: error %v, want it to say %q", tt.s, err, tt.want)
		}
	}
}
