package mesh

import (
	"time"

	"github.com/perchhq/perch/internal/geo"
)

// FiberOneWay is a Config.OneWay for a simulated world: half the fiber
// round trip between two regions' cities, times inflation (geo.FiberRTT).
// Unknown regions get no delay rather than an unreachable link.
func FiberOneWay(w *geo.World, inflation float64) func(from, to string) time.Duration {
	return func(from, to string) time.Duration {
		rtt := w.FiberRTT(from, to, inflation)
		if rtt == geo.Unreachable {
			return 0
		}
		return rtt / 2
	}
}
