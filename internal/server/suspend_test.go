package server

import (
	"context"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// TestSuspendRefusals: a machine over 2048 MB cannot be suspended (400,
// saying the limit), and a machine that is not started cannot (409,
// saying its state). No host acts here, so no machine ever starts.
func TestSuspendRefusals(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 8192})
	big, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 4096}}})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, s.c.SuspendMachine(ctx, "web", big.ID), 400, "has 4096 MB of memory; only machines with at most 2048 MB can be suspended")
	small, err := s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: api.Guest{MemoryMB: 256}}})
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, s.c.SuspendMachine(ctx, "web", small.ID), 409, "is created, not started; only a started machine can be suspended")
}
