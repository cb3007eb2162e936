package cli

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
)

// Metadata keys perch deploy puts on machines.
const (
	metaRelease = "perch_release"
	metaConfig  = "perch_config"
)

// deployStep is one machine perch deploy rolls: Replace is the ID of the
// machine the new one replaces, or "" when the region gets a new machine.
type deployStep struct {
	Group   string // the process group
	Region  string
	Replace string
}

// deployPlan is what perch deploy will do, in order.
type deployPlan struct {
	Steps []deployStep
	// Kept are regions that have machines but are no longer deploy targets;
	// their machines are left alone.
	Kept []regionCount
	// Removed are the machines of process groups the config no longer
	// has; they are destroyed once the deploy succeeded, as flyctl does.
	Removed []api.Machine
}

type regionCount struct {
	Region   string
	Machines int
}

// live is the machines not on their way out.
func live(ms []api.Machine) []api.Machine {
	var out []api.Machine
	for _, m := range ms {
		if m.State != api.StateDestroying && m.State != api.StateDestroyed {
			out = append(out, m)
		}
	}
	return out
}

// byRegion groups machines by region, oldest first within one.
func byRegion(ms []api.Machine) map[string][]api.Machine {
	out := map[string][]api.Machine{}
	for _, m := range ms {
		out[m.Region] = append(out[m.Region], m)
	}
	for _, rs := range out {
		slices.SortFunc(rs, func(a, b api.Machine) int {
			return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
		})
	}
	return out
}

// primaryFirst orders regions with primary first, the rest as given.
func primaryFirst(regions []string, primary string) []string {
	out := []string{}
	if slices.Contains(regions, primary) {
		out = append(out, primary)
	}
	for _, r := range regions {
		if r != primary && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out
}

// deployRegions picks where to deploy: the config's regions, else the
// regions the app's machines are in, else the primary region.
func deployRegions(existing []api.Machine, cfgRegions []string, primary string) ([]string, error) {
	regions := slices.Clone(cfgRegions)
	if len(regions) == 0 {
		for r := range byRegion(existing) {
			regions = append(regions, r)
		}
		slices.Sort(regions)
	}
	if len(regions) == 0 && primary != "" {
		regions = []string{primary}
	}
	if len(regions) == 0 {
		return nil, errors.New("no region to deploy to: pass --region (e.g. --region iad; `perch regions` lists them), or set primary_region in perch.toml")
	}
	return primaryFirst(regions, primary), nil
}

// flagRegions applies perch deploy --region over perch.toml: the flag's
// regions are where to deploy, and the primary region is perch.toml's when
// it is one of them, else the flag's first.
func flagRegions(flag, cfgRegions []string, primary string) ([]string, string) {
	if len(flag) == 0 {
		return cfgRegions, primary
	}
	if !slices.Contains(flag, primary) {
		primary = flag[0]
	}
	return slices.Clone(flag), primary
}

// withPrimaryRegion is mc with PRIMARY_REGION set to the deploy's primary
// region when perch.toml did not set it (it has no primary_region), so every
// machine knows it as on Fly.
func withPrimaryRegion(mc api.MachineConfig, p deployPlan) api.MachineConfig {
	regions := planRegions(p)
	if _, ok := mc.Env[config.EnvPrimaryRegion]; ok || len(regions) == 0 {
		return mc
	}
	env := maps.Clone(mc.Env)
	if env == nil {
		env = map[string]string{}
	}
	env[config.EnvPrimaryRegion] = regions[0]
	mc.Env = env
	return mc
}

// planDeploy rolls every live machine of the target regions, one region at
// a time, primary first, group by group within a region, and gives a region
// without machines of a group one. Machines of a group not in groups (nil:
// the default group only) are to be removed.
func planDeploy(existing []api.Machine, cfgRegions []string, primary string, groups []string) (deployPlan, error) {
	if len(groups) == 0 {
		groups = []string{config.DefaultProcessGroup}
	}
	existing = live(existing)
	var p deployPlan
	var kept []api.Machine
	for _, m := range existing {
		if slices.Contains(groups, processGroup(m)) {
			kept = append(kept, m)
		} else {
			p.Removed = append(p.Removed, m)
		}
	}
	regions, err := deployRegions(kept, cfgRegions, primary)
	if err != nil {
		return deployPlan{}, err
	}
	byRegionGroup := byRegion(kept)
	for _, r := range regions {
		for _, g := range groups {
			var ms []api.Machine
			for _, m := range byRegionGroup[r] {
				if processGroup(m) == g {
					ms = append(ms, m)
				}
			}
			if len(ms) == 0 {
				p.Steps = append(p.Steps, deployStep{Group: g, Region: r})
				continue
			}
			for _, m := range ms {
				p.Steps = append(p.Steps, deployStep{Group: g, Region: r, Replace: m.ID})
			}
		}
	}
	for r, ms := range byRegionGroup {
		if !slices.Contains(regions, r) {
			p.Kept = append(p.Kept, regionCount{r, len(ms)})
		}
	}
	slices.SortFunc(p.Kept, func(a, b regionCount) int { return cmp.Compare(a.Region, b.Region) })
	slices.SortFunc(p.Removed, func(a, b api.Machine) int {
		return cmp.Or(cmp.Compare(processGroup(a), processGroup(b)), cmp.Compare(a.Region, b.Region), cmp.Compare(a.ID, b.ID))
	})
	return p, nil
}

// processGroup is a machine's process group, from its metadata as on Fly;
// a machine without one is of the default group.
func processGroup(m api.Machine) string {
	return cmp.Or(m.Config.Metadata[config.MetaProcessGroup], config.DefaultProcessGroup)
}

// nextRelease is "v<N+1>" where vN is the highest release among machines.
func nextRelease(existing []api.Machine) string {
	n := 0
	for _, m := range existing {
		v, ok := strings.CutPrefix(m.Config.Metadata[metaRelease], "v")
		if !ok {
			continue
		}
		if i, err := strconv.Atoi(v); err == nil && i > n {
			n = i
		}
	}
	return "v" + strconv.Itoa(n+1)
}

// configHash identifies a machine config, so status can show which
// machines run the same one. Metadata is left out: it holds the hash.
func configHash(c api.MachineConfig) string {
	c.Metadata = nil
	b, err := json.Marshal(c)
	if err != nil {
		panic(fmt.Sprintf("configHash: %v", err)) // plain data always marshals
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// withRelease returns c with release metadata set, not touching c's map.
func withRelease(c api.MachineConfig, release string) api.MachineConfig {
	meta := map[string]string{}
	for k, v := range c.Metadata {
		meta[k] = v
	}
	meta[metaConfig] = configHash(c)
	meta[metaRelease] = release
	c.Metadata = meta
	return c
}
