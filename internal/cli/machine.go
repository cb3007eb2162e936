package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newMachineCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "machine",
		Aliases: []string{"machines", "m"},
		Short:   "List, inspect, start, stop, suspend and destroy the app's machines",
	}
	cmd.AddCommand(
		newMachineListCmd(g),
		newMachineStatusCmd(g),
		newMachineStartCmd(g),
		newMachineStopCmd(g),
		newMachineSuspendCmd(g),
		newMachineDestroyCmd(g),
	)
	return cmd
}

// machineRun resolves the app and client, then calls fn.
func machineRun(g *globals, fn func(cmd *cobra.Command, c *api.Client, app string, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		app, c, err := g.appClient()
		if err != nil {
			return err
		}
		return fn(cmd, c, app, args)
	}
}

func newMachineListCmd(g *globals) *cobra.Command {
	var asJSON bool
	var region string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the app's machines",
		Args:    cobra.NoArgs,
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			ms, err := c.ListMachines(cmd.Context(), app, region)
			if err != nil {
				return fmt.Errorf("machine list: %w", err)
			}
			if ms == nil {
				ms = []api.Machine{}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ms)
			}
			if len(ms) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s has no machines.\n", app)
				return nil
			}
			renderMachines(cmd.OutOrStdout(), ms, time.Now())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVarP(&region, "region", "r", "", "only this region's machines")
	return cmd
}

func newMachineStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ID",
		Short: "Show one machine in detail: state, host, exit code, last logs, events",
		Args:  cobra.ExactArgs(1),
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			m, err := c.GetMachine(cmd.Context(), app, args[0])
			if err != nil {
				return fmt.Errorf("machine status: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), m)
			}
			renderMachine(cmd.OutOrStdout(), m, time.Now())
			return nil
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// renderMachine prints one machine's details.
func renderMachine(w io.Writer, m *api.Machine, now time.Time) {
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-11s %s\n", k+":", v)
		}
	}
	field("ID", m.ID)
	field("App", m.AppName)
	field("State", machineState(*m))
	field("Region", m.Region)
	field("Host", fmt.Sprintf("%s (%s)", cmp.Or(m.HostID, "-"), cmp.Or(m.HostStatus, "?")))
	field("Private IP", m.PrivateIP)
	field("Image", m.Config.Image)
	field("Image ref", m.ImageRef.Ref())
	field("Release", m.Config.Metadata[metaRelease])
	field("Created", fmt.Sprintf("%s (%s ago)", m.CreatedAt.UTC().Format(time.RFC3339), formatAge(now.Sub(m.CreatedAt))))
	if m.ExitCode != nil {
		code := fmt.Sprint(*m.ExitCode)
		if m.OOMKilled {
			code += " (out of memory)"
		}
		field("Exit code", code)
	}
	if len(m.LastLogs) > 0 {
		fmt.Fprintln(w, "Last log lines:")
		for _, l := range m.LastLogs {
			fmt.Fprintf(w, "  | %s\n", l)
		}
	}
	if len(m.Events) > 0 {
		fmt.Fprintln(w, "Events:")
		for _, e := range m.Events {
			line := fmt.Sprintf("  %s  %s %s (%s)", e.Time().UTC().Format(time.RFC3339), e.Type, e.Status, e.Source)
			if e.ExitCode != nil {
				line += fmt.Sprintf(" exit code %d", *e.ExitCode)
			}
			if e.Message != "" {
				line += ": " + e.Message
			}
			fmt.Fprintln(w, line)
		}
	}
}

func newMachineStartCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "Start a stopped machine, or resume a suspended one",
		Args:  cobra.ExactArgs(1),
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			if err := c.StartMachine(cmd.Context(), app, args[0]); err != nil {
				return fmt.Errorf("machine start: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Machine %s is starting\n", args[0])
			return nil
		}),
	}
}

func newMachineSuspendCmd(g *globals) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "suspend ID",
		Short: "Suspend a started machine: snapshot its memory and stop it; `machine start` resumes it",
		Args:  cobra.ExactArgs(1),
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			id := args[0]
			if err := c.SuspendMachine(cmd.Context(), app, id); err != nil {
				return fmt.Errorf("machine suspend: %w", err)
			}
			if wait <= 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "Machine %s is suspending\n", id)
				return nil
			}
			m, err := awaitSuspended(cmd.Context(), c, app, id, wait)
			if err != nil {
				return fmt.Errorf("machine suspend: %w", err)
			}
			if m.State == api.StateSuspended {
				fmt.Fprintf(cmd.OutOrStdout(), "Machine %s is suspended\n", id)
				return nil
			}
			why := ""
			if len(m.Events) > 0 { // the latest first
				why = ": " + m.Events[0].Message
			}
			return fmt.Errorf("machine suspend: machine %s was stopped instead of suspended%s", id, why)
		}),
	}
	cmd.Flags().DurationVar(&wait, "wait-timeout", 2*time.Minute, "how long to wait for the machine to be suspended; 0 returns at once")
	return cmd
}

// awaitSuspended polls the machine until it is suspended or stopped (a
// suspension that failed), for at most wait.
func awaitSuspended(ctx context.Context, c *api.Client, app, id string, wait time.Duration) (*api.Machine, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		m, err := c.GetMachine(ctx, app, id)
		if err != nil {
			return nil, err
		}
		if m.State == api.StateSuspended || m.State == api.StateStopped || m.State == api.StateFailed {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("machine %s is still %s after %s", id, m.State, wait)
		case <-tick.C:
		}
	}
}

func newMachineStopCmd(g *globals) *cobra.Command {
	var req api.StopRequest
	cmd := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a machine (it keeps its config and can be started again)",
		Args:  cobra.ExactArgs(1),
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			if err := c.StopMachine(cmd.Context(), app, args[0], &req); err != nil {
				return fmt.Errorf("machine stop: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Machine %s is stopping\n", args[0])
			return nil
		}),
	}
	cmd.Flags().StringVarP(&req.Signal, "signal", "s", "", "signal to stop with, e.g. SIGTERM (default: the server's)")
	cmd.Flags().StringVar(&req.Timeout, "timeout", "", "how long to wait before SIGKILL, e.g. 10s")
	return cmd
}

func newMachineDestroyCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "destroy ID",
		Aliases: []string{"rm"},
		Short:   "Destroy a machine; a started one only with --force",
		Args:    cobra.ExactArgs(1),
		RunE: machineRun(g, func(cmd *cobra.Command, c *api.Client, app string, args []string) error {
			err := c.DestroyMachine(cmd.Context(), app, args[0], force)
			var he *api.HTTPError
			if errors.As(err, &he) && he.StatusCode == http.StatusPreconditionFailed {
				return fmt.Errorf("machine destroy: %w; pass --force to stop and destroy it", err)
			}
			if err != nil {
				return fmt.Errorf("machine destroy: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Destroyed machine %s\n", args[0])
			return nil
		}),
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop a started machine first")
	return cmd
}
