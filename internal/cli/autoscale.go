package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newAutoscaleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "autoscale",
		Short: "Add machines where the app's traffic comes from, and remove them when it goes",
		Long: `The autoscaler adds machines in the regions whose edges the app's requests
enter through, enough that each machine carries at most target × soft limit
requests in flight, within min/max; it removes the machines it added after
the scale-down window without demand. See docs/autoscale.md.`,
	}
	cmd.AddCommand(newAutoscaleSetCmd(g), newAutoscaleShowCmd(g), newAutoscaleDisableCmd(g))
	return cmd
}

// autoscaleApp is the app of an autoscale command: --app, else perch.toml's.
func autoscaleApp(g *globals, cmd *cobra.Command) (string, error) {
	if g.app != "" {
		return g.app, nil
	}
	cfg, err := optionalProject(g, cmd)
	if err != nil {
		return "", err
	}
	if cfg == nil || cfg.App == "" {
		return "", errors.New("which app? pass --app NAME, or run where the app's perch.toml is")
	}
	return cfg.App, nil
}

func newAutoscaleSetCmd(g *globals) *cobra.Command {
	var s api.AutoscaleSettings
	var window time.Duration
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Turn autoscaling on, or change its settings",
		Example: `  perch autoscale set --max 6
  perch autoscale set --min 1 --max 10 --max-per-region 3 --regions iad,syd,fra --target 0.7 --window 5m`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := autoscaleApp(g, cmd)
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("max") {
				return errors.New("autoscale set: --max is required: the most machines the autoscaler may run, e.g. --max 6")
			}
			if cmd.Flags().Changed("target") && (s.TargetUtilisation <= 0 || s.TargetUtilisation > 1) {
				return fmt.Errorf("autoscale set: --target must be above 0 and at most 1 (a share of the soft limit, e.g. 0.7), got %g", s.TargetUtilisation)
			}
			if s.MinMachines < 0 || s.MaxMachines < 0 || s.MaxPerRegion < 0 {
				return errors.New("autoscale set: --min, --max and --max-per-region must not be negative")
			}
			if s.MinMachines > s.MaxMachines {
				return fmt.Errorf("autoscale set: --min %d is above --max %d: raise --max or lower --min", s.MinMachines, s.MaxMachines)
			}
			if window < 0 {
				return fmt.Errorf("autoscale set: --window must not be negative, got %s", window)
			}
			if window > 0 {
				s.ScaleDownWindow = window.String()
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			a, err := c.SetAutoscale(ctx, app, s)
			if err != nil {
				return fmt.Errorf("autoscale set: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "autoscaling %s: %s\n", app, describeSettings(a.Settings))
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&s.MinMachines, "min", 0, "fewest machines to keep in all")
	f.IntVar(&s.MaxMachines, "max", 0, "most machines in all (required)")
	f.IntVar(&s.MaxPerRegion, "max-per-region", 0, "most machines in one region (0: no limit)")
	f.StringSliceVar(&s.Regions, "regions", nil, "regions machines may be added in (default: every region with a host)")
	f.Float64Var(&s.TargetUtilisation, "target", 0, "share of a machine's soft limit to aim at, in (0, 1] (default 0.7)")
	f.DurationVar(&window, "window", 0, "how long demand must stay low before machines are removed (default 5m)")
	return cmd
}

func newAutoscaleShowCmd(g *globals) *cobra.Command {
	var asJSON bool
	var last int
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the settings, demand by region, machine counts and the last decisions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := autoscaleApp(g, cmd)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			a, err := c.GetAutoscale(ctx, app)
			if err != nil {
				return fmt.Errorf("autoscale show: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), a)
			}
			printAutoscale(cmd.OutOrStdout(), a, last)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&last, "last", 10, "how many decisions to print")
	return cmd
}

func newAutoscaleDisableCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "disable",
		Short: "Turn autoscaling off (the machines it added stay)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, err := autoscaleApp(g, cmd)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			if err := c.DisableAutoscale(ctx, app); err != nil {
				return fmt.Errorf("autoscale disable: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "autoscaling of %s is off; machines it added stay (perch scale count removes them)\n", app)
			return nil
		},
	}
}

// applyAutoscale sets perch.toml's [autoscale] after a deploy; an absent
// section leaves the app's settings as they are.
func applyAutoscale(ctx context.Context, c *api.Client, app string, s *api.AutoscaleSettings, out io.Writer) error {
	if s == nil {
		return nil
	}
	a, err := c.SetAutoscale(ctx, app, *s)
	if err != nil {
		return fmt.Errorf("deploy: [autoscale]: %w", err)
	}
	fmt.Fprintf(out, "autoscaling: %s\n", describeSettings(a.Settings))
	return nil
}

func describeSettings(s api.AutoscaleSettings) string {
	per := "no limit"
	if s.MaxPerRegion > 0 {
		per = fmt.Sprint(s.MaxPerRegion)
	}
	regions := "every region with a host"
	if len(s.Regions) > 0 {
		regions = strings.Join(s.Regions, ",")
	}
	target := "0.7"
	if s.TargetUtilisation > 0 {
		target = fmt.Sprint(s.TargetUtilisation)
	}
	return fmt.Sprintf("min %d, max %d, per region %s, regions %s, target %s, scale-down window %s",
		s.MinMachines, s.MaxMachines, per, regions, target, cmp.Or(s.ScaleDownWindow, "5m"))
}

func printAutoscale(w io.Writer, a *api.Autoscale, last int) {
	if !a.Enabled {
		fmt.Fprintf(w, "autoscaling of %s is off (perch autoscale set --max N turns it on)\n", a.App)
		return
	}
	fmt.Fprintf(w, "%s: %s\n", a.App, describeSettings(a.Settings))
	if !a.UpdatedAt.IsZero() {
		fmt.Fprintf(w, "demand and machines as of %s (the autoscaler's last round)\n", a.UpdatedAt.Local().Format("15:04:05"))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tREQ/S\tIN FLIGHT\tLATENCY\tSERVED BY\tMACHINES\tSTARTED\tDESIRED")
	for _, r := range a.Regions {
		lat := "-"
		if r.LatencyMS > 0 {
			lat = fmt.Sprintf("%.0f ms", r.LatencyMS)
		}
		var by []string
		for _, reg := range slices.Sorted(maps.Keys(r.ServedBy)) {
			by = append(by, fmt.Sprintf("%s %.0f%%", reg, r.ServedBy[reg]*100))
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%s\t%s\t%d\t%d\t%d\n", r.Region, r.RPS, r.Concurrency, lat, cmp.Or(strings.Join(by, ", "), "-"), r.Machines, r.Started, r.Desired)
	}
	tw.Flush()
	ds := a.Decisions
	if len(ds) > last {
		ds = ds[len(ds)-last:]
	}
	if len(ds) == 0 {
		fmt.Fprintln(w, "\nno decisions yet")
		return
	}
	fmt.Fprintln(w, "\nlast decisions:")
	for _, d := range ds {
		line := d.At.Local().Format("15:04:05") + "  " + d.Reason
		if d.Blocked != "" {
			line += "  [blocked: " + d.Blocked + "]"
		}
		fmt.Fprintln(w, line)
	}
}
