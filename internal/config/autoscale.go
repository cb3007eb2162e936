package config

import (
	"math"

	"github.com/perchhq/perch/internal/api"
)

// autoscale reads [autoscale]: the bounds within which the autoscaler
// adds machines where demand enters (docs/autoscale.md).
func (d *decoder) autoscale(s *section) *api.AutoscaleSettings {
	a := &api.AutoscaleSettings{}
	minP := path{"autoscale", "min_machines"}
	if n, p, ok := s.count("min_machines", 0); ok {
		a.MinMachines, minP = n, p
	}
	if n, p, ok := s.count("max_machines", 1); ok {
		if n > 1000 {
			d.errorf(p, "max_machines must be at most 1000, got %d", n)
		}
		a.MaxMachines = n
	} else if _, _, present := s.get("max_machines"); !present {
		d.errorf(path{"autoscale"}, "[autoscale] needs max_machines: the most machines the autoscaler may run, e.g. max_machines = 6")
	}
	if n, _, ok := s.count("max_per_region", 0); ok {
		a.MaxPerRegion = n
	}
	if rs, p, ok := s.strs("regions", `["iad", "syd"]`); ok {
		seen := map[string]bool{}
		for i, r := range rs {
			d.region(p.index(i), r)
			if seen[r] {
				d.errorf(p.index(i), "regions lists %q twice", r)
			}
			seen[r] = true
		}
		a.Regions = rs
	}
	if v, p, ok := s.get("target_utilisation"); ok {
		var f float64
		switch v := v.(type) {
		case float64:
			f = v
		case int64:
			f = float64(v)
		default:
			d.errorf(p, "target_utilisation must be a number above 0 and at most 1, e.g. 0.7, got %s", describe(v))
		}
		if f <= 0 || f > 1 || math.IsNaN(f) {
			d.errorf(p, "target_utilisation must be above 0 and at most 1 (a share of the soft limit, e.g. 0.7), got %v", v)
		} else {
			a.TargetUtilisation = f
		}
	}
	if w := d.seconds(s, "scale_down_window"); w > 0 {
		a.ScaleDownWindow = w.String()
	}
	if a.MaxMachines > 0 && a.MinMachines > a.MaxMachines {
		d.errorf(minP, "min_machines (%d) is above max_machines (%d): raise max_machines or lower min_machines", a.MinMachines, a.MaxMachines)
	}
	s.done()
	return a
}
