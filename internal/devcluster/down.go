package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/agent"
)

// ReadInfo reads dir's world.json.
func ReadInfo(dir string) (Info, error) {
	var i Info
	b, err := os.ReadFile(InfoPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return i, fmt.Errorf("no dev world in %s (no world.json); start one with perch dev up", dir)
	}
	if err != nil {
		return i, fmt.Errorf("read world.json: %w", err)
	}
	if err := json.Unmarshal(b, &i); err != nil {
		return i, fmt.Errorf("world.json in %s is not valid: %w", dir, err)
	}
	return i, nil
}

// Down stops the world running in dir: it asks `perch dev up` to shut down
// and waits; if that process is gone already, it cleans up what it left.
func Down(ctx context.Context, dir, perchBin string, log *slog.Logger) error {
	i, err := ReadInfo(dir)
	if err != nil {
		return err
	}
	if i.PID > 0 && processAlive(i.PID) {
		_ = syscall.Kill(i.PID, syscall.SIGTERM)
		deadline := time.Now().Add(3 * time.Minute)
		for processAlive(i.PID) {
			if time.Now().After(deadline) {
				return fmt.Errorf("perch dev up (pid %d) did not stop in 3 minutes", i.PID)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		if _, err := os.Stat(InfoPath(dir)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	// The world's process died without cleaning up: do it here.
	var errs []error
	for _, r := range i.Regions {
		if r.PID > 0 && processAlive(r.PID) {
			_ = syscall.Kill(r.PID, syscall.SIGKILL)
		}
	}
	// Gone before their machines and networks are removed under them.
	for _, r := range i.Regions {
		deadline := time.Now().Add(10 * time.Second)
		for r.PID > 0 && processRunning(r.PID) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, r := range i.Regions {
		if err := agent.Cleanup(ctx, r.StateDir, shimCommand(perchBin), log); err != nil {
			errs = append(errs, err)
		}
	}
	// The servers of a world of several, last (machines were cleaned up
	// by their agents' state above, not through the API).
	killServers(i)
	if i.Anycast != nil {
		if err := removeLab(i.Anycast.Lab); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.Remove(InfoPath(dir))
	return errors.Join(errs...)
}

// processRunning says whether pid is a process that has not exited (a
// zombie, exited but not yet reaped, has).
func processRunning(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, after, ok := strings.Cut(string(b), ") ")
	return ok && !strings.HasPrefix(after, "Z")
}
