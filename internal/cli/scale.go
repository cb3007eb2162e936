package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/spf13/cobra"
)

func newScaleCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "scale",
		Short: "Change how many machines the app runs",
	}
	cmd.AddCommand(newScaleCountCmd(g))
	return cmd
}

func newScaleCountCmd(g *globals) *cobra.Command {
	var regions []string
	var yes bool
	var waitTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "count N | GROUP=N ...",
		Short: "Run N machines in each region (given, or each region the app is in), per process group",
		Long: `Run N machines in each region: the regions given with --region, else each
region the app (or the group) has machines in, else its primary region.
An app with several process groups ([processes]) is scaled per group, as
on Fly: perch scale count web=2 worker=1. A plain N needs an app with one
group. New machines copy the config of the group's newest machine (else
that of the last release) and must start; machines to remove go newest
first. Removing machines asks for confirmation unless --yes. A deploy keeps
each group's count in each region.`,
		Example: `  perch scale count 3
  perch scale count web=2 worker=1 --region iad`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			counts, err := parseCounts(args)
			if err != nil {
				return err
			}
			if err := checkWaitTimeout(waitTimeout); err != nil {
				return err
			}
			cfg, err := optionalProject(g, cmd)
			if err != nil {
				return err
			}
			app, primary := g.app, ""
			// perch.toml's primary region counts only for its own app.
			if cfg != nil && (app == "" || app == cfg.App) {
				app, primary = cfg.App, cfg.PrimaryRegion
			}
			if app == "" {
				return errors.New("which app? pass --app NAME, or run where the app's perch.toml is")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			existing, err := c.ListMachines(ctx, app, "")
			if err != nil {
				return fmt.Errorf("scale: %w", err)
			}
			rel, err := lastRelease(ctx, c, app)
			if err != nil {
				return fmt.Errorf("scale: %w", err)
			}
			plans, err := planGroupScale(existing, rel, regions, primary, counts)
			if err != nil {
				return err
			}
			var doomed []string
			for _, gp := range plans {
				for _, st := range gp.steps {
					doomed = append(doomed, st.Destroy...)
				}
			}
			if len(doomed) > 0 && !yes {
				prompt := fmt.Sprintf("This destroys %s of %s: %s.", plural(len(doomed), "machine"), app, strings.Join(doomed, ", "))
				if err := confirm(cmd, prompt, "yes"); err != nil {
					return err
				}
			}
			d := &deployer{c: c, app: app, out: cmd.OutOrStdout(), opts: deployOptions{WaitTimeout: waitTimeout}}
			for _, gp := range plans {
				for _, st := range gp.steps {
					if err := d.scaleRegion(ctx, existing, gp, st); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVarP(&regions, "region", "r", nil, "regions to scale (comma-separated or repeated)")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "destroy machines without asking")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", 60*time.Second, "how long each new machine may take to start")
	return cmd
}

// scaleRegion brings one group of one region to its count: new machines
// copy the template's config and must start; removed ones are drained.
func (d *deployer) scaleRegion(ctx context.Context, existing []api.Machine, gp groupScale, st scaleStep) error {
	label := groupLabel(st.Region, gp.group)
	if st.Create > 0 {
		tmpl := gp.template(existing, st.Region)
		if tmpl == nil {
			return fmt.Errorf("%s has no machine to copy the config from (process group %s): run `perch deploy` first", d.app, gp.group)
		}
		mc := *tmpl
		mc.Mounts = append([]api.Mount(nil), mc.Mounts...)
		for i := range mc.Mounts {
			mc.Mounts[i].Volume = "" // each new machine its own volume of that name (volumes.go)
		}
		r := &rollout{d: d, mc: mc}
		news, err := r.launch(ctx, st.Region, gp.group, st.Create, false)
		if err == nil {
			err = r.await(ctx, news, 0)
		}
		if err != nil {
			reason := d.explainFailure(ctx, err)
			r.undo(ctx)
			return fmt.Errorf("scale %s in %s: %s", d.app, label, reason)
		}
	}
	// Scaling down drains: each machine's host takes it out of the edges'
	// rotation and lets its requests finish before its kill_signal.
	byID := map[string]api.Machine{}
	for _, m := range existing {
		byID[m.ID] = m
	}
	err := parallel(machinesByID(byID, st.Destroy), func(m api.Machine) error {
		if m.State == api.StateStarted || m.State == api.StateStarting {
			if err := stopAndWait(ctx, d.c, d.app, m); err != nil {
				return fmt.Errorf("stopping machine %s: %w", m.ID, err)
			}
		}
		if err := d.c.DestroyMachine(ctx, d.app, m.ID, false); err != nil {
			return fmt.Errorf("destroying machine %s: %w", m.ID, err)
		}
		fmt.Fprintf(d.out, "%s: drained and destroyed machine %s\n", label, m.ID)
		return nil
	})
	if err != nil {
		return fmt.Errorf("scale %s in %s: %w", d.app, label, err)
	}
	if st.Create == 0 && len(st.Destroy) == 0 {
		fmt.Fprintf(d.out, "%s: already %s\n", label, plural(gp.n, "machine"))
	} else {
		fmt.Fprintf(d.out, "%s: now %s\n", label, plural(gp.n, "machine"))
	}
	return nil
}

// lastRelease is the app's newest release that completed, nil if none.
func lastRelease(ctx context.Context, c *api.Client, app string) (*api.Release, error) {
	rs, err := c.ListReleases(ctx, app)
	if err != nil {
		return nil, fmt.Errorf("listing releases: %w", err)
	}
	var best *api.Release
	for i := range rs {
		if rs[i].Status != api.ReleaseComplete && rs[i].Status != api.ReleaseSuperseded {
			continue
		}
		if best == nil || rs[i].Version > best.Version {
			best = &rs[i]
		}
	}
	return best, nil
}

// optionalProject loads perch.toml when it is there; it is an error only
// when --config named a file that is missing.
func optionalProject(g *globals, cmd *cobra.Command) (*config.Config, error) {
	_, err := os.Stat(g.configPath)
	if errors.Is(err, fs.ErrNotExist) && !cmd.Flags().Changed("config") {
		return nil, nil
	}
	return loadProject(g.configPath, cmd.ErrOrStderr())
}

// machinesByID looks the ids up, keeping their order; an id not found
// stands as a machine with only its id.
func machinesByID(byID map[string]api.Machine, ids []string) []api.Machine {
	out := make([]api.Machine, 0, len(ids))
	for _, id := range ids {
		m, ok := byID[id]
		if !ok {
			m = api.Machine{ID: id}
		}
		out = append(out, m)
	}
	return out
}
