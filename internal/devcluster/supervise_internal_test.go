package devcluster

import (
	"testing"
	"time"
)

// TestRestartDelay: an agent that ran long is started again at once; one
// that keeps dying young waits longer each time, up to restartMaxDelay.
func TestRestartDelay(t *testing.T) {
	if d := restartDelay(time.Hour, 7); d != 0 {
		t.Errorf("after a long run: %s, want 0", d)
	}
	if d := restartDelay(time.Second, 0); d != 0 {
		t.Errorf("first quick death: %s, want 0", d)
	}
	prev := time.Duration(0)
	for quick := 1; quick < 70; quick++ {
		d := restartDelay(time.Second, quick)
		if d < prev || d > restartMaxDelay || d <= 0 {
			t.Fatalf("quick death %d: %s after %s; want growing, within (0, %s]", quick, d, prev, restartMaxDelay)
		}
		prev = d
	}
	if prev != restartMaxDelay {
		t.Errorf("a crash loop's delay ends at %s, want %s", prev, restartMaxDelay)
	}
}
