package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime/microvm"
)

// Cleanup destroys every machine an agent with state dir stateDir left
// running, sandboxes and microVMs, with their network namespaces, veths
// and taps, the host bridge, and the volumes' mounts (not the volumes).
// `perch dev down` uses it after stopping the agents; nothing the agent made
// in the kernel is left behind.
func Cleanup(ctx context.Context, stateDir string, shim []string, log *slog.Logger) error {
	var errs []error
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	drivers, err := newDrivers(stateDir, shim, "", microvm.Config{}, log)
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", stateDir, err)
	}
	a := &Agent{drivers: drivers}
	ids, err := a.listEverywhere(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for id, drv := range ids {
		if err := drv.Destroy(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("destroy machine %s: %w", id, err))
		}
		if err := hostnet.Detach(id); err != nil {
			errs = append(errs, fmt.Errorf("detach machine %s: %w", id, err))
		}
	}
	if err := unmountAllVolumes(stateDir); err != nil { // volumes.go: the data stays
		errs = append(errs, fmt.Errorf("unmount volumes: %w", err))
	}
	var hf hostFile
	if b, err := os.ReadFile(filepath.Join(stateDir, "host.json")); err == nil && json.Unmarshal(b, &hf) == nil && hf.ID != "" {
		if err := hostnet.DeleteBridge(BridgeName(hf.ID)); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge: %w", err))
		}
		if err := hostnet.RemovePolicy(BridgeName(hf.ID)); err != nil {
			errs = append(errs, fmt.Errorf("remove network policy: %w", err))
		}
		if err := hostnet.RemoveSixPN(BridgeName(hf.ID)); err != nil {
			errs = append(errs, fmt.Errorf("remove 6PN routing rule: %w", err))
		}
	}
	return errors.Join(errs...)
}
