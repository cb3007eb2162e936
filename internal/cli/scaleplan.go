package cli

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
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

// groupCount is one count of perch scale count: GROUP=N, or N alone
// (Group "") for an app with one process group.
type groupCount struct {
	Group string
	N     int
}

// parseCounts reads perch scale count's arguments: one N, or GROUP=N
// pairs, as fly scale count takes them.
func parseCounts(args []string) ([]groupCount, error) {
	var out []groupCount
	for _, a := range args {
		group, num, pair := strings.Cut(a, "=")
		if !pair {
			num, group = a, ""
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("scale count: %q is not a count; write N (a number 0 or more) or GROUP=N, e.g. perch scale count web=2 worker=1", a)
		}
		if pair && group == "" {
			return nil, fmt.Errorf("scale count: %q names no process group; write GROUP=N, e.g. web=2", a)
		}
		if !pair && len(args) > 1 {
			return nil, fmt.Errorf("scale count: %q: give one N, or a GROUP=N per process group, e.g. perch scale count web=2 worker=1", a)
		}
		if slices.ContainsFunc(out, func(c groupCount) bool { return c.Group == group }) {
			return nil, fmt.Errorf("scale count: process group %s is given twice", group)
		}
		out = append(out, groupCount{Group: group, N: n})
	}
	return out, nil
}

// groupScale is what perch scale count does to one process group.
type groupScale struct {
	group    string
	n        int
	machines []api.Machine // the group's live machines
	// release is the group's config in the last release, for a region
	// (or a group) with no machine to copy; nil if none.
	release *api.MachineConfig
	steps   []scaleStep
}

// template is the config new machines of the group in region copy: the
// group's newest machine there, else its newest anywhere, else the last
// release's.
func (gp groupScale) template(existing []api.Machine, region string) *api.MachineConfig {
	if m := templateMachine(gp.machines, region); m != nil {
		return &m.Config
	}
	return gp.release
}

// planGroupScale plans each count: the group's machines brought to N in
// each region given, else each region the group (else the app) is in,
// else the primary region.
func planGroupScale(existing []api.Machine, rel *api.Release, regions []string, primary string, counts []groupCount) ([]groupScale, error) {
	existing = live(existing)
	known := map[string]*api.MachineConfig{}
	for _, m := range existing {
		known[processGroup(m)] = nil
	}
	if rel != nil {
		for g, mc := range releaseConfigs(*rel) {
			mc = withRelease(mc, "v"+strconv.Itoa(rel.Version))
			known[g] = &mc
		}
	}
	names := slices.Sorted(maps.Keys(known))
	var out []groupScale
	for _, c := range counts {
		g := c.Group
		if g == "" {
			if len(names) > 1 {
				return nil, fmt.Errorf("scale count: the app has process groups %s; give a count per group, e.g. perch scale count %s=%d", strings.Join(names, ", "), names[0], c.N)
			}
			g = config.DefaultProcessGroup
			if len(names) == 1 {
				g = names[0]
			}
		} else if _, ok := known[g]; !ok {
			if len(names) == 0 {
				return nil, fmt.Errorf("scale count: the app has no machines and no release yet: run `perch deploy` first")
			}
			return nil, fmt.Errorf("scale count: the app has no process group %q; its groups are %s", g, strings.Join(names, ", "))
		}
		gp := groupScale{group: g, n: c.N, release: known[g]}
		for _, m := range existing {
			if processGroup(m) == g {
				gp.machines = append(gp.machines, m)
			}
		}
		regs := regions
		if len(regs) == 0 && len(gp.machines) == 0 {
			for r := range byRegion(existing) {
				regs = append(regs, r)
			}
			slices.Sort(regs)
			regs = primaryFirst(regs, primary)
		}
		steps, err := planScale(gp.machines, regs, primary, c.N)
		if err != nil {
			return nil, err
		}
		gp.steps = steps
		out = append(out, gp)
	}
	return out, nil
}
