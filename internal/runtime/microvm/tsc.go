package microvm

import (
	"slices"
	"sync"
	"time"
)

// hostTSCkHz is the host's time stamp counter rate in kHz, 0 if unknown.
// An emulated guest reads the host's counter, and cannot calibrate it
// against qemu's emulated timer when the host is busy: the kernel then
// marks the counter unusable and hangs in its boot. Told the rate
// (tsc_early_khz=), it skips the calibration.
var hostTSCkHz = sync.OnceValue(func() uint64 {
	var rates []uint64
	for range 3 {
		t0, c0 := time.Now(), rdtsc()
		time.Sleep(20 * time.Millisecond)
		c1, elapsed := rdtsc(), time.Since(t0)
		if c1 <= c0 || elapsed <= 0 {
			return 0
		}
		rates = append(rates, (c1-c0)*uint64(time.Millisecond)/uint64(elapsed))
	}
	slices.Sort(rates)
	return rates[1]
})
