package cli

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func TestPlanScale(t *testing.T) {
	three := []api.Machine{
		machine("a1", "iad", api.StateStarted, 1, "v1"),
		machine("a3", "iad", api.StateStarted, 3, "v1"),
		machine("a2", "iad", api.StateStarted, 2, "v1"),
		machine("b1", "ams", api.StateStarted, 1, "v1"),
		machine("x1", "ams", api.StateDestroying, 9, "v1"),
	}
	tests := []struct {
		name     string
		existing []api.Machine
		regions  []string
		primary  string
		n        int
		want     []scaleStep
		wantErr  bool
	}{
		{
			name:     "each region with machines, primary first; newest destroyed first",
			existing: three,
			primary:  "iad",
			n:        1,
			want: []scaleStep{
				{Region: "iad", Have: 3, Destroy: []string{"a3", "a2"}},
				{Region: "ams", Have: 1},
			},
		},
		{
			name:     "given region grows",
			existing: three,
			regions:  []string{"ams"},
			n:        3,
			want:     []scaleStep{{Region: "ams", Have: 1, Create: 2}},
		},
		{
			name:     "given region without machines",
			existing: three,
			regions:  []string{"sin"},
			n:        2,
			want:     []scaleStep{{Region: "sin", Create: 2}},
		},
		{
			name:     "zero removes all",
			existing: three,
			regions:  []string{"iad"},
			n:        0,
			want:     []scaleStep{{Region: "iad", Have: 3, Destroy: []string{"a3", "a2", "a1"}}},
		},
		{
			name:    "no machines: primary region",
			primary: "sin",
			n:       2,
			want:    []scaleStep{{Region: "sin", Create: 2}},
		},
		{name: "nowhere to scale", n: 1, wantErr: true},
		{name: "negative", existing: three, n: -1, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := planScale(tt.existing, tt.regions, tt.primary, tt.n)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("plan (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTemplateMachine(t *testing.T) {
	ms := []api.Machine{
		machine("a1", "iad", api.StateStarted, 1, "v1"),
		machine("a2", "iad", api.StateStarted, 5, "v2"),
		machine("b1", "ams", api.StateStarted, 3, "v2"),
		machine("z9", "ams", api.StateDestroying, 9, "v3"),
	}
	for region, want := range map[string]string{"ams": "b1", "iad": "a2", "sin": "a2"} {
		got := templateMachine(ms, region)
		if got == nil || got.ID != want {
			t.Errorf("templateMachine(%s) = %v, want %s", region, got, want)
		}
	}
	if got := templateMachine(nil, "iad"); got != nil {
		t.Errorf("templateMachine(no machines) = %v, want nil", got)
	}
}
