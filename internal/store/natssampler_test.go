package store

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server/pse"
)

// TestQuietNATSSampler: the linkname reaches nats-server's sampler; once
// quieted, the sampler's file is gone, so its next tick does not re-arm
// (pse's periodic returns on a failed read) and usage reads fail.
func TestQuietNATSSampler(t *testing.T) {
	var pcpu float64
	var rss, vss int64
	if err := pse.ProcUsage(&pcpu, &rss, &vss); err != nil {
		t.Fatalf("ProcUsage before quieting: %v", err)
	}
	saved := natsProcStatFile
	t.Cleanup(func() { natsProcStatFile = saved })
	QuietNATSSampler()
	if err := pse.ProcUsage(&pcpu, &rss, &vss); err == nil {
		t.Fatal("ProcUsage after QuietNATSSampler succeeded; the sampler still has its file and keeps waking the process")
	}
}
