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
	"github.com/perchhq/perch/internal/runtime/runc"
)

// Cleanup destroys every machine an agent with state dir stateDir left
// running, with their network namespaces and veths, and the host bridge.
// `perch dev down` uses it after stopping the agents; nothing the agent made
// in the kernel is left behind.
func Cleanup(ctx context.Context, stateDir string, shim []string, log *slog.Logger) error {
	var errs []error
	drv, err := runc.New(runc.Config{StateDir: filepath.Join(stateDir, "runc"), ShimCommand: shim, Log: log})
	if err != nil {
		return fmt.Errorf("cleanup %s: %w", stateDir, err)
	}
	ids, err := drv.List(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if err := drv.Destroy(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("destroy machine %s: %w", id, err))
		}
		if err := hostnet.Detach(id); err != nil {
			errs = append(errs, fmt.Errorf("detach machine %s: %w", id, err))
		}
	}
	var hf hostFile
	if b, err := os.ReadFile(filepath.Join(stateDir, "host.json")); err == nil && json.Unmarshal(b, &hf) == nil && hf.ID != "" {
		if err := hostnet.DeleteBridge(BridgeName(hf.ID)); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge: %w", err))
		}
	}
	return errors.Join(errs...)
}
