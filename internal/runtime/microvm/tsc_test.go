package microvm

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestHostTSC: the measured rate is the one the host kernel calls its
// CPU's, where /proc/cpuinfo shows the TSC rate (a VM host, a CPU without
// frequency scaling); elsewhere it is at least plausible.
func TestHostTSC(t *testing.T) {
	khz := hostTSCkHz()
	if khz < 100_000 || khz > 10_000_000 {
		t.Fatalf("host TSC rate = %d kHz, not a CPU's", khz)
	}
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "cpu MHz"); ok && strings.Contains(string(b), "tsc_known_freq") {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":")), 64)
			if err == nil && (float64(khz) < mhz*1000*0.99 || float64(khz) > mhz*1000*1.01) {
				t.Errorf("host TSC rate = %d kHz; /proc/cpuinfo says %.0f kHz", khz, mhz*1000)
			}
			break
		}
	}
	t.Logf("host TSC: %d kHz", khz)
}
