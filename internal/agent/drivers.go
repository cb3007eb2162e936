package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/runtime/runc"
)

// defaultRuntime is the driver of machines whose config names none.
const defaultRuntime = "runc"

// newDrivers makes the host's runtime drivers, by name, over stateDir:
// runc always; microvm too, even where this host cannot boot VMs, so that
// the machines an earlier agent left can still be listed and destroyed,
// and a new one fails with what is missing.
func newDrivers(stateDir string, runcShim []string, runcPath string, vm microvm.Config, log *slog.Logger) (map[string]perchrt.Driver, error) {
	rc, err := runc.New(runc.Config{
		StateDir: filepath.Join(stateDir, "runc"), ShimCommand: runcShim,
		RuncPath: runcPath, Log: log.With("component", "runc"),
	})
	if err != nil {
		return nil, fmt.Errorf("agent: runtime: %w", err)
	}
	vm.StateDir = filepath.Join(stateDir, "microvm")
	vm.Log = log.With("component", "microvm")
	mv, err := microvm.New(vm)
	if err != nil {
		return nil, fmt.Errorf("agent: runtime: %w", err)
	}
	return map[string]perchrt.Driver{rc.Name(): rc, mv.Name(): mv}, nil
}

// startDrivers makes the drivers and says once whether this host can run
// microVMs.
func (a *Agent) startDrivers() error {
	drivers, err := newDrivers(a.cfg.StateDir, a.cfg.ShimCommand, a.cfg.RuncPath, a.cfg.MicroVM, a.log)
	if err != nil {
		return err
	}
	a.drivers = drivers
	if mv, ok := drivers["microvm"].(*microvm.Driver); ok {
		if err := mv.Check(); err != nil {
			a.log.Info("microVMs unavailable on this host; machines with guest.runtime = \"microvm\" will fail here", "reason", err)
		}
	}
	return nil
}

// driverNamed is the driver called name ("" is the default); an unknown
// name gives a driver that fails to create anything, saying so.
func (a *Agent) driverNamed(name string) perchrt.Driver {
	if name == "" {
		name = defaultRuntime
	}
	if d, ok := a.drivers[name]; ok {
		return d
	}
	return unavailable{name}
}

// destroyEverywhere destroys machine id in every driver: its instance may
// be in another runtime than its spec now names.
func (a *Agent) destroyEverywhere(ctx context.Context, id string) error {
	var errs []error
	for _, d := range a.drivers {
		errs = append(errs, d.Destroy(ctx, id))
	}
	return errors.Join(errs...)
}

// listEverywhere is every driver's machines, with the driver of each.
func (a *Agent) listEverywhere(ctx context.Context) (map[string]perchrt.Driver, error) {
	ids := map[string]perchrt.Driver{}
	var errs []error
	for _, d := range a.drivers {
		list, err := d.List(ctx)
		errs = append(errs, err)
		for _, id := range list {
			ids[id] = d
		}
	}
	return ids, errors.Join(errs...)
}

// logFiles is where machine id's output may be, whichever driver runs it:
// the shipper tails what exists.
func (a *Agent) logFiles(id string) []perchrt.LogFile {
	var files []perchrt.LogFile
	names := make([]string, 0, len(a.drivers))
	for name := range a.drivers {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		files = append(files, a.drivers[name].Logs(id)...)
	}
	return files
}

// unavailable stands for a runtime this agent does not have.
type unavailable struct{ name string }

func (u unavailable) err() error {
	return fmt.Errorf("runtime %q is not available on this host; use \"runc\" or \"microvm\"", u.name)
}

func (u unavailable) Name() string                               { return u.name }
func (u unavailable) Create(context.Context, perchrt.Spec) error { return u.err() }
func (u unavailable) Start(context.Context, string) error        { return perchrt.ErrNotFound }
func (u unavailable) Destroy(context.Context, string) error      { return nil }
func (u unavailable) Logs(string) []perchrt.LogFile              { return nil }
func (u unavailable) List(context.Context) ([]string, error)     { return nil, nil }
func (u unavailable) State(context.Context, string) (perchrt.State, error) {
	return perchrt.State{}, perchrt.ErrNotFound
}
func (u unavailable) Wait(context.Context, string) (perchrt.State, error) {
	return perchrt.State{}, perchrt.ErrNotFound
}
func (u unavailable) Stop(context.Context, string, syscall.Signal, time.Duration) error {
	return perchrt.ErrNotFound
}
