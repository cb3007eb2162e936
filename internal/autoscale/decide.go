package autoscale

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Demand is what the edges of one origin region saw of one app over the
// last report interval.
type Demand struct {
	RPS float64
	// Concurrency is the average number of requests in flight (Little's
	// law over the interval), the metric the count is scaled on.
	Concurrency float64
	// LatencyMS is the average time to answer; ServedBy the share of
	// requests each region's machines answered.
	LatencyMS float64
	ServedBy  map[string]float64
}

// Count is an app's machines in one region.
type Count struct {
	Total   int // every machine not being destroyed, stopped ones included
	Started int
	Owned   int // of Total, those the autoscaler added (only these it removes)
}

// Recommendation is what Decide computed at one time, before the
// stabilisation window; the caller keeps those within the window.
type Recommendation struct {
	At      time.Time
	Desired map[string]int
}

// Input is everything Decide looks at.
type Input struct {
	Now      time.Time
	Settings Settings
	// Demand by origin region (the region of the edge a request entered).
	Demand map[string]Demand
	// Machines by region.
	Machines map[string]Count
	// History is the earlier recommendations, oldest first; those older
	// than the window are ignored.
	History []Recommendation
	// Nearest picks, for demand entering where machines are not allowed,
	// the allowed region that serves it; such demand is ignored if nil.
	Nearest func(origin string, allowed []string) string
}

// Change is one region whose count should change.
type Change struct {
	Region   string
	From, To int
	Reason   string
}

// Output is Decide's answer.
type Output struct {
	// Desired is the machine count per region after the window (every
	// region with machines or demand appears).
	Desired        map[string]int
	Recommendation Recommendation
	Changes        []Change
}

// Decide computes per-region machine counts. Per region, enough machines
// that each carries at most Target × SoftLimit requests in flight:
// ceil(concurrency / (Target × SoftLimit)), kept as it is when within
// the tolerance. Machines the autoscaler did not add are a floor; the
// total stays within Max (new machines go first to the regions with most
// unserved demand) and at least Min. Scale-up is immediate; a region
// scales down only to the highest recommendation within the window.
func Decide(in Input) Output {
	s := in.Settings
	per := s.Target * float64(s.SoftLimit)
	if per <= 0 {
		per = DefaultTarget * DefaultSoftLimit
	}
	allowed := map[string]bool{}
	for _, r := range s.Regions {
		allowed[r] = true
	}

	// Demand by the region that should serve it.
	dem := map[string]Demand{}
	via := map[string][]string{} // region -> origins folded into it
	for origin, d := range in.Demand {
		target := origin
		if !allowed[origin] {
			if in.Nearest == nil || len(s.Regions) == 0 {
				continue
			}
			target = in.Nearest(origin, s.Regions)
			via[target] = append(via[target], origin)
		}
		t := dem[target]
		t.RPS += d.RPS
		t.Concurrency += d.Concurrency
		if target == origin {
			t.LatencyMS, t.ServedBy = d.LatencyMS, d.ServedBy
		}
		dem[target] = t
	}

	regions := map[string]bool{}
	for r := range in.Machines {
		regions[r] = true
	}
	for r := range dem {
		regions[r] = true
	}
	names := slices.Sorted(maps.Keys(regions))

	floor := map[string]int{}
	want := map[string]int{}
	for _, r := range names {
		c := in.Machines[r]
		floor[r] = c.Total - c.Owned
		if !allowed[r] {
			want[r] = floor[r]
			continue
		}
		conc := dem[r].Concurrency
		w := int(math.Ceil(conc/per - 1e-9))
		if c.Total > 0 && conc > 0 && math.Abs(conc/(float64(c.Total)*per)-1) <= s.Tolerance {
			w = c.Total
		}
		if conc > 0 || dem[r].RPS > 0 {
			w = max(w, 1)
		}
		if s.MaxPerRegion > 0 {
			w = min(w, s.MaxPerRegion)
		}
		want[r] = max(w, floor[r])
	}

	// Allocate within Max: floors first, then one machine at a time to the
	// region with the most unserved demand.
	rec := maps.Clone(floor)
	total := 0
	for _, n := range rec {
		total += n
	}
	unserved := func(r string) float64 { return dem[r].Concurrency - float64(rec[r])*per }
	for total < s.Max {
		best := ""
		for _, r := range names {
			if rec[r] >= want[r] {
				continue
			}
			if best == "" || cmp.Or(cmp.Compare(unserved(r), unserved(best)), cmp.Compare(dem[r].RPS, dem[best].RPS)) > 0 {
				best = r
			}
		}
		if best == "" {
			break
		}
		rec[best]++
		total++
	}
	// At least Min: in the allowed regions with most demand, else where
	// machines already are, else the first allowed region.
	for total < s.Min {
		best := ""
		for _, r := range s.Regions {
			if s.MaxPerRegion > 0 && rec[r] >= s.MaxPerRegion {
				continue
			}
			if best == "" || cmp.Or(cmp.Compare(dem[r].Concurrency, dem[best].Concurrency), cmp.Compare(in.Machines[r].Total, in.Machines[best].Total), -cmp.Compare(rec[r], rec[best])) > 0 {
				best = r
			}
		}
		if best == "" {
			break
		}
		rec[best]++
		total++
		if _, ok := regions[best]; !ok {
			regions[best] = true
			names = slices.Sorted(maps.Keys(regions))
		}
	}

	// Stabilise: scale down only to the highest recommendation in the window.
	out := Output{Desired: map[string]int{}, Recommendation: Recommendation{At: in.Now, Desired: rec}}
	held := map[string]int{}
	for _, r := range names {
		cur := in.Machines[r].Total
		d := rec[r]
		if d < cur {
			hi := d
			for _, h := range in.History {
				if in.Now.Sub(h.At) <= s.Window {
					hi = max(hi, h.Desired[r])
				}
			}
			if hi > d {
				held[r] = min(hi, cur)
			}
			d = min(max(d, hi), cur)
		}
		if cur > 0 && (dem[r].Concurrency > 0 || dem[r].RPS > 0) {
			d = max(d, 1) // never the last machine where demand enters
		}
		out.Desired[r] = d
	}
	// Held machines still count against Max: trim scale-ups, least
	// unserved demand first.
	sum := 0
	for _, n := range out.Desired {
		sum += n
	}
	for sum > max(s.Max, s.Min) {
		worst := ""
		for _, r := range names {
			if out.Desired[r] <= in.Machines[r].Total {
				continue
			}
			if worst == "" || unservedAt(dem[r], out.Desired[r], per) < unservedAt(dem[worst], out.Desired[worst], per) {
				worst = r
			}
		}
		if worst == "" {
			break
		}
		out.Desired[worst]--
		sum--
	}

	for _, r := range names {
		cur, d := in.Machines[r].Total, out.Desired[r]
		if d == cur {
			continue
		}
		out.Changes = append(out.Changes, Change{Region: r, From: cur, To: d, Reason: explain(r, dem[r], via[r], in.Machines[r], d, per, s, sum)})
	}
	return out
}

func unservedAt(d Demand, n int, per float64) float64 { return d.Concurrency - float64(n-1)*per }

// explain is a decision as `perch autoscale show` prints it:
// "sin: 41 req/s, 3.2 in flight from the sin edge, 0 machines, served from
// iad at 236 ms → +1 machine in sin".
func explain(r string, d Demand, via []string, c Count, to int, per float64, s Settings, total int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %.0f req/s, %.1f in flight from the %s edge", r, d.RPS, d.Concurrency, r)
	if len(via) > 0 {
		slices.Sort(via)
		fmt.Fprintf(&b, " (and from %s, where machines are not allowed)", strings.Join(via, ", "))
	}
	fmt.Fprintf(&b, ", %d machine%s", c.Total, pl(c.Total))
	if c.Total > c.Started {
		fmt.Fprintf(&b, " (%d stopped)", c.Total-c.Started)
	}
	if len(d.ServedBy) > 0 {
		fmt.Fprintf(&b, ", served from %s", servedBy(d.ServedBy))
		if d.LatencyMS > 0 {
			fmt.Fprintf(&b, " at %.0f ms", d.LatencyMS)
		}
	}
	delta := to - c.Total
	sign := "+"
	if delta < 0 {
		sign = "-"
	}
	n := delta
	if n < 0 {
		n = -n
	}
	fmt.Fprintf(&b, " → %s%d machine%s in %s", sign, n, pl(n), r)
	switch {
	case delta > 0:
		fmt.Fprintf(&b, " (%d for ceil(%.1f / (%.2f × %d)), %d of max %d in all)", to, d.Concurrency, s.Target, s.SoftLimit, total, s.Max)
	case d.Concurrency == 0 && d.RPS == 0:
		fmt.Fprintf(&b, " (no demand for %s)", s.Window)
	default:
		fmt.Fprintf(&b, " (%.1f in flight needs %d at %.1f each, for %s)", d.Concurrency, to, per, s.Window)
	}
	return b.String()
}

func servedBy(m map[string]float64) string {
	rs := slices.SortedFunc(maps.Keys(m), func(a, b string) int { return cmp.Or(-cmp.Compare(m[a], m[b]), cmp.Compare(a, b)) })
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		if len(rs) == 1 {
			parts = append(parts, r)
		} else {
			parts = append(parts, fmt.Sprintf("%s %.0f%%", r, m[r]*100))
		}
	}
	return strings.Join(parts, ", ")
}

func pl(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
