package edge

import (
	"slices"

	"github.com/perchhq/perch/internal/geo"
)

// Nearness ranks regions as seen from this edge, nearest first. The table
// calls it when it rebuilds, never on the request path.
type Nearness interface {
	// Rank returns regions, nearest first. Regions it does not know may be
	// left out; the table puts them last.
	Rank(regions []string) []string
}

// GeoNearness ranks regions by great-circle distance from region from.
func GeoNearness(w *geo.World, from string) Nearness { return geoNearness{w: w, from: from} }

type geoNearness struct {
	w    *geo.World
	from string
}

func (g geoNearness) Rank(regions []string) []string {
	return g.w.Nearest(g.from, slices.Clone(regions))
}
