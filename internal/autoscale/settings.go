// Package autoscale turns the demand every edge reports by origin region
// (subject perch.demand.<region>) into a desired machine count per region,
// and runs the control loop that adds and removes machines to match.
//
// Decide is pure: demand, machine counts, settings and earlier
// recommendations in, per-region desired counts and their explanations out,
// so tests and the bench replay traces through it with simulated time.
// Loop is the control plane's side (perch server runs it under a lease in
// the KV); it reaches machines only through a Cluster. Only the server,
// config validation and tests import this package.
package autoscale

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// Defaults for settings left zero.
const (
	DefaultTarget = 0.7
	// DefaultSoftLimit is the per-machine concurrency assumed when a
	// service sets no soft_limit: Fly's default (fly.io/docs/apps/concurrency).
	DefaultSoftLimit = 20
	DefaultWindow    = 5 * time.Minute
	// Tolerance is the relative difference between demand and capacity
	// within which the count stays as it is (Kubernetes' HPA default).
	Tolerance = 0.1
	// MaxMachinesLimit bounds max_machines, so a typo cannot ask for
	// thousands of machines.
	MaxMachinesLimit = 1000
)

// Settings are an app's resolved autoscaling settings.
type Settings struct {
	Min, Max     int
	MaxPerRegion int      // 0: no per-region limit beyond Max
	Regions      []string // allowed regions; resolved, never empty in Decide
	Target       float64
	SoftLimit    int
	Window       time.Duration
	Tolerance    float64
}

// Validate checks settings as a user wrote them: known is the set of
// region codes that exist (nil skips that check). Errors name the field
// and say what is allowed.
func Validate(s api.AutoscaleSettings, known func(string) bool) error {
	var errs []error
	if s.MinMachines < 0 {
		errs = append(errs, fmt.Errorf("min_machines must be 0 or more, got %d", s.MinMachines))
	}
	if s.MaxMachines < 0 {
		errs = append(errs, fmt.Errorf("max_machines must be 0 or more, got %d", s.MaxMachines))
	}
	if s.MaxMachines > MaxMachinesLimit {
		errs = append(errs, fmt.Errorf("max_machines must be at most %d, got %d", MaxMachinesLimit, s.MaxMachines))
	}
	if s.MaxPerRegion < 0 {
		errs = append(errs, fmt.Errorf("max_per_region must be 0 (no limit) or more, got %d", s.MaxPerRegion))
	}
	if s.MaxMachines == 0 {
		errs = append(errs, errors.New("max_machines is required: the most machines the autoscaler may run (e.g. max_machines = 6)"))
	} else if s.MinMachines > s.MaxMachines {
		errs = append(errs, fmt.Errorf("min_machines (%d) is above max_machines (%d): raise max_machines or lower min_machines", s.MinMachines, s.MaxMachines))
	}
	if s.TargetUtilisation < 0 || s.TargetUtilisation > 1 || math.IsNaN(s.TargetUtilisation) {
		errs = append(errs, fmt.Errorf("target_utilisation must be above 0 and at most 1 (a share of the soft limit, e.g. 0.7), got %g", s.TargetUtilisation))
	}
	if s.ScaleDownWindow != "" {
		d, err := time.ParseDuration(s.ScaleDownWindow)
		if err != nil {
			errs = append(errs, fmt.Errorf("scale_down_window must be a duration like \"5m\" or \"30s\", got %q", s.ScaleDownWindow))
		} else if d < 0 {
			errs = append(errs, fmt.Errorf("scale_down_window must not be negative, got %s", s.ScaleDownWindow))
		}
	}
	seen := map[string]bool{}
	for _, r := range s.Regions {
		switch {
		case r == "":
			errs = append(errs, errors.New("regions: an empty region code"))
		case seen[r]:
			errs = append(errs, fmt.Errorf("regions: %q is listed twice", r))
		case known != nil && !known(r):
			errs = append(errs, fmt.Errorf("regions: unknown region %q (perch regions lists them)", r))
		}
		seen[r] = true
	}
	return errors.Join(errs...)
}

// Resolve fills in defaults: withHosts are the regions that have hosts
// (the allowed regions when s names none), softLimit the app's service
// soft limit (0: unset).
func Resolve(s api.AutoscaleSettings, withHosts []string, softLimit int) Settings {
	r := Settings{
		Min: s.MinMachines, Max: s.MaxMachines, MaxPerRegion: s.MaxPerRegion,
		Target: s.TargetUtilisation, SoftLimit: softLimit, Window: DefaultWindow, Tolerance: Tolerance,
	}
	if r.Target == 0 {
		r.Target = DefaultTarget
	}
	if r.SoftLimit <= 0 {
		r.SoftLimit = DefaultSoftLimit
	}
	if d, err := time.ParseDuration(s.ScaleDownWindow); err == nil && s.ScaleDownWindow != "" {
		r.Window = d
	}
	if len(s.Regions) > 0 {
		r.Regions = slices.Clone(s.Regions)
	} else {
		r.Regions = slices.Clone(withHosts)
	}
	slices.Sort(r.Regions)
	return r
}

// String is the settings as `perch autoscale show` prints them.
func (s Settings) String() string {
	per := "no limit"
	if s.MaxPerRegion > 0 {
		per = fmt.Sprint(s.MaxPerRegion)
	}
	return fmt.Sprintf("min %d, max %d, per region %s, regions %s, target %.0f%% of soft limit %d, scale-down window %s",
		s.Min, s.Max, per, strings.Join(s.Regions, ","), s.Target*100, s.SoftLimit, s.Window)
}
