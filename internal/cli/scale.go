package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
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
		Use:   "count N",
		Short: "Run N machines in each region (given, or each region the app is in)",
		Long: `Run N machines in each region: the regions given with --region, else each
region the app has machines in, else its primary region. New machines copy
the config of the app's newest machine and must start; machines to remove go
newest first. Removing machines asks for confirmation unless --yes.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 0 {
				return fmt.Errorf("scale count: N must be a number 0 or more, got %q", args[0])
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
			steps, err := planScale(existing, regions, primary, n)
			if err != nil {
				return err
			}
			var doomed []string
			for _, st := range steps {
				doomed = append(doomed, st.Destroy...)
			}
			if len(doomed) > 0 && !yes {
				prompt := fmt.Sprintf("This destroys %s of %s: %s.", plural(len(doomed), "machine"), app, strings.Join(doomed, ", "))
				if err := confirm(cmd, prompt, "yes"); err != nil {
					return err
				}
			}
			d := &deployer{c: c, app: app, out: cmd.OutOrStdout(), opts: deployOptions{WaitTimeout: waitTimeout}}
			for _, st := range steps {
				if st.Create > 0 {
					tmpl := templateMachine(existing, st.Region)
					if tmpl == nil {
						return fmt.Errorf("%s has no machine to copy the config from: run `perch deploy` first", app)
					}
					mc := tmpl.Config
					mc.Mounts = append([]api.Mount(nil), mc.Mounts...)
					for i := range mc.Mounts {
						mc.Mounts[i].Volume = "" // each new machine its own volume of that name (volumes.go)
					}
					r := &rollout{d: d, mc: mc}
					news, err := r.launch(ctx, st.Region, st.Create, false)
					if err == nil {
						err = r.await(ctx, news, 0)
					}
					if err != nil {
						reason := d.explainFailure(ctx, err)
						r.undo(ctx)
						return fmt.Errorf("scale %s in %s: %s", app, st.Region, reason)
					}
				}
				// Scaling down drains: each machine's host takes it out of
				// the edges' rotation and lets its requests finish before
				// its kill_signal.
				byID := map[string]api.Machine{}
				for _, m := range existing {
					byID[m.ID] = m
				}
				err := parallel(machinesByID(byID, st.Destroy), func(m api.Machine) error {
					if m.State == api.StateStarted || m.State == api.StateStarting {
						if err := stopAndWait(ctx, c, app, m); err != nil {
							return fmt.Errorf("stopping machine %s: %w", m.ID, err)
						}
					}
					if err := c.DestroyMachine(ctx, app, m.ID, false); err != nil {
						return fmt.Errorf("destroying machine %s: %w", m.ID, err)
					}
					fmt.Fprintf(d.out, "%s: drained and destroyed machine %s\n", st.Region, m.ID)
					return nil
				})
				if err != nil {
					return fmt.Errorf("scale %s in %s: %w", app, st.Region, err)
				}
				if st.Create == 0 && len(st.Destroy) == 0 {
					fmt.Fprintf(d.out, "%s: already %s\n", st.Region, plural(n, "machine"))
				} else {
					fmt.Fprintf(d.out, "%s: now %s\n", st.Region, plural(n, "machine"))
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
