package cli

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// releaseCommand is [deploy] release_command: run once per deploy in a
// temporary machine of the new release (its image, env and secrets),
// before any machine is replaced.
type releaseCommand struct {
	Args    []string
	Timeout time.Duration
	// Guest sizes its machine from the app's ([deploy.release_command_vm]);
	// nil: the app's.
	Guest func(app api.Guest) api.Guest
}

// releaseGroup is the process group Fly gives the release command's
// machine; the machine is never routed to (it has no services).
const releaseGroup = "fly_app_release_command"

// runRelease runs the release command in region and destroys its machine.
// A non-zero exit or the timeout fails the deploy with the command's last
// log lines; nothing of the app has changed by then.
func (d *deployer) runRelease(ctx context.Context, rc *releaseCommand, region string, mc api.MachineConfig) error {
	cfg := mc
	cfg.Services = nil
	cfg.Mounts = nil        // as on Fly: the release machine mounts no volume (each is one machine's)
	cfg.AutoDestroy = false // destroyed here, once its logs are read
	cfg.Restart = api.Restart{Policy: api.RestartNo}
	if rc.Guest != nil {
		cfg.Guest = rc.Guest(mc.Guest)
	}
	cfg.Init.Cmd = append([]string{}, rc.Args...)
	cfg.Env = maps.Clone(mc.Env)
	if cfg.Env == nil {
		cfg.Env = map[string]string{}
	}
	cfg.Env["RELEASE_COMMAND"] = "1" // as Fly sets it
	cfg.Metadata = maps.Clone(mc.Metadata)
	if cfg.Metadata == nil {
		cfg.Metadata = map[string]string{}
	}
	cfg.Metadata["fly_process_group"] = releaseGroup
	cmdline := strings.Join(rc.Args, " ")
	fmt.Fprintf(d.out, "Running release command in %s: %s (timeout %s, %s)\n", region, cmdline, rc.Timeout, guestText(cfg.Guest))
	start := time.Now()
	m, err := d.c.CreateMachine(ctx, d.app, api.CreateMachineRequest{Region: region, Config: cfg})
	if err != nil {
		return fmt.Errorf("release command: creating its machine: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := d.c.DestroyMachine(cctx, d.app, m.ID, true); err != nil && !api.IsNotFound(err) {
			fmt.Fprintf(d.out, "warning: could not destroy the release command's machine %s: %v\n", m.ID, err)
		}
	}()
	deadline := start.Add(rc.Timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			d.printLastLines(ctx, region, m.ID, nil, "last log lines of the release command")
			return fmt.Errorf("release command %q did not finish within %s (release_command_timeout); it was killed. Make it finish sooner or raise release_command_timeout in [deploy]", cmdline, rc.Timeout)
		}
		err := d.c.WaitMachine(ctx, d.app, m.ID, api.StateStopped+","+api.StateFailed, min(left, time.Minute))
		if err == nil {
			break
		}
		if !api.IsTimeout(err) {
			return fmt.Errorf("release command: waiting for machine %s: %w", m.ID, err)
		}
	}
	got, err := d.c.GetMachine(ctx, d.app, m.ID)
	if err != nil {
		return fmt.Errorf("release command: machine %s: %w", m.ID, err)
	}
	if got.ExitCode == nil || *got.ExitCode != 0 {
		code := "no exit code"
		if got.ExitCode != nil {
			code = fmt.Sprintf("exit code %d", *got.ExitCode)
		}
		d.printLastLines(ctx, region, m.ID, got.LastLogs, "last log lines of the release command")
		return fmt.Errorf("release command %q failed (%s); fix it and deploy again", cmdline, code)
	}
	fmt.Fprintf(d.out, "Release command finished in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// guestText is a machine's size as the deploy output shows it.
func guestText(g api.Guest) string {
	return fmt.Sprintf("%s, %d CPU, %d MB", cmp.Or(g.CPUKind, "shared"), max(g.CPUs, 1), g.MemoryMB)
}
