package server

import (
	"context"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// TestGuestRuntime: runc and microvm are accepted, a microVM gets room for
// its kernel, and anything else says which runtimes there are.
func TestGuestRuntime(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "web"})
	s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	create := func(g api.Guest) (*api.Machine, error) {
		return s.c.CreateMachine(ctx, "web", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "i", Guest: g}})
	}
	_, err := create(api.Guest{Runtime: "firecracker"})
	wantStatus(t, err, 400, `config.guest.runtime "firecracker" is not a runtime; use "runc" or "microvm"`)
	_, err = create(api.Guest{Runtime: "microvm", MemoryMB: 64})
	wantStatus(t, err, 400, "memory_mb must be at least 128 for a microvm, got 64")
	for _, g := range []api.Guest{{Runtime: "microvm", MemoryMB: 128}, {Runtime: "runc", MemoryMB: 64}} {
		m, err := create(g)
		if err != nil {
			t.Fatalf("create with %+v: %v", g, err)
		}
		if m.Config.Guest.Runtime != g.Runtime {
			t.Errorf("machine's runtime = %q, want %q", m.Config.Guest.Runtime, g.Runtime)
		}
	}
}
