package cli

import (
	"cmp"
	"errors"
	"slices"

	"github.com/perchhq/perch/internal/api"
)

// scaleStep brings one region to the wanted count: Create new machines, or
// Destroy these (newest first).
type scaleStep struct {
	Region  string
	Have    int
	Create  int
	Destroy []string
}

// planScale brings each region to n live machines. Regions are the ones
// given, else those the app has machines in (primary first), else the
// primary region.
func planScale(existing []api.Machine, regions []string, primary string, n int) ([]scaleStep, error) {
	if n < 0 {
		return nil, errors.New("the machine count must be 0 or more")
	}
	existing = live(existing)
	groups := byRegion(existing)
	if len(regions) == 0 {
		for r := range groups {
			regions = append(regions, r)
		}
		slices.Sort(regions)
		regions = primaryFirst(regions, primary)
	}
	if len(regions) == 0 && primary != "" {
		regions = []string{primary}
	}
	if len(regions) == 0 {
		return nil, errors.New("no region to scale: pass --region, or set primary_region in perch.toml")
	}
	var steps []scaleStep
	for _, r := range regions {
		ms := groups[r]
		st := scaleStep{Region: r, Have: len(ms)}
		if len(ms) < n {
			st.Create = n - len(ms)
		}
		// byRegion sorts oldest first; remove from the end.
		for i := len(ms) - 1; i >= n; i-- {
			st.Destroy = append(st.Destroy, ms[i].ID)
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// templateMachine is the machine whose config new machines of region copy:
// the newest in that region, else the newest of the app.
func templateMachine(existing []api.Machine, region string) *api.Machine {
	var best *api.Machine
	newer := func(m *api.Machine) bool {
		return best == nil || cmp.Or(m.CreatedAt.Compare(best.CreatedAt), cmp.Compare(m.ID, best.ID)) > 0
	}
	ms := live(existing)
	for i := range ms {
		if ms[i].Region == region && newer(&ms[i]) {
			best = &ms[i]
		}
	}
	if best != nil {
		return best
	}
	for i := range ms {
		if newer(&ms[i]) {
			best = &ms[i]
		}
	}
	return best
}
