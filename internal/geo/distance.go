package geo

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// EarthRadiusKm is the mean radius used for great-circle distances.
const EarthRadiusKm = 6371.0

// FiberKmPerMs is how far light travels in optical fiber in a millisecond
// (about two thirds of c).
const FiberKmPerMs = 200.0

// Unreachable is the round-trip time FiberRTT gives for an unknown region.
const Unreachable = time.Duration(math.MaxInt64)

// Distance is the great-circle distance in km between two regions' cities
// (haversine). A region is 0 km from itself. An unknown code is infinitely
// far (+Inf) from everything, so it sorts last and never counts as near.
func (w *World) Distance(a, b string) (km float64) {
	ra, okA := w.regions[a]
	rb, okB := w.regions[b]
	if !okA || !okB {
		return math.Inf(1)
	}
	if a == b {
		return 0
	}
	return haversine(ra.Lat, ra.Lon, rb.Lat, rb.Lon)
}

func haversine(lat1, lon1, lat2, lon2 float64) float64 {
	rad := math.Pi / 180
	dLat := (lat2 - lat1) * rad
	dLon := (lon2 - lon1) * rad
	h := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(lat1*rad)*math.Cos(lat2*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	// Rounding can push h a hair above 1 for antipodes; Asin would give NaN.
	h = math.Min(h, 1)
	return 2 * EarthRadiusKm * math.Asin(math.Sqrt(h))
}

// Nearest returns candidates ordered by distance from from, nearest first:
// from itself (if listed) comes first, equal distances are ordered by code,
// and unknown codes come last. candidates is not modified; duplicates are
// kept.
func (w *World) Nearest(from string, candidates []string) []string {
	out := slices.Clone(candidates)
	slices.SortStableFunc(out, func(x, y string) int {
		// from comes first even when it is not a known region, so a caller
		// always prefers its own region.
		if (x == from) != (y == from) {
			if x == from {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(w.Distance(from, x), w.Distance(from, y)), cmp.Compare(x, y))
	})
	return out
}

// FiberRTT is the round-trip time of light in fiber between two regions'
// cities: 2 × distance / FiberKmPerMs, times inflation, the ratio of the real
// fiber path to the great circle (about 1.5 on the Internet; 1 for the
// physical minimum). It is Unreachable if either code is unknown.
func (w *World) FiberRTT(a, b string, inflation float64) time.Duration {
	d := w.Distance(a, b)
	if math.IsInf(d, 1) {
		return Unreachable
	}
	ms := 2 * d / FiberKmPerMs * inflation
	return time.Duration(ms * float64(time.Millisecond))
}
