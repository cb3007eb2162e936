package mesh

import (
	"testing"

	"github.com/perchhq/perch/internal/geo"
)

func TestFiberOneWayIsHalfTheFiberRoundTrip(t *testing.T) {
	w := geo.Default()
	oneWay := FiberOneWay(w, 1.5)
	if got, want := oneWay("iad", "ams"), w.FiberRTT("iad", "ams", 1.5)/2; got != want || got <= 0 {
		t.Fatalf("iad->ams one way %v, want %v", got, want)
	}
	if got := oneWay("iad", "nowhere"); got != 0 {
		t.Fatalf("unknown region delayed by %v; want no delay", got)
	}
}
