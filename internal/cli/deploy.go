package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newDeployCmd(g *globals) *cobra.Command {
	var image string
	var waitTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Roll the app's machines to a new release, one region at a time",
		Long: `Roll the app's machines to a new release described by perch.toml.

Regions are perch.toml's regions, else the regions the app has machines in,
else its primary_region; the primary region goes first. Each old machine is
replaced by a new one that must start before the old one is destroyed. If a
new machine does not start, deploy removes it, leaves the old ones running
and fails with the reason.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkWaitTimeout(waitTimeout); err != nil {
				return err
			}
			cfg, err := loadProject(g.configPath, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			app := cmp.Or(g.app, cfg.App)
			if app == "" {
				return fmt.Errorf("%s has no app name: add app = \"NAME\" or pass --app", g.configPath)
			}
			img := cmp.Or(image, cfg.Build.Image)
			if img == "" {
				return fmt.Errorf("no image to deploy: set image under [build] in %s or pass --image", g.configPath)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			d := &deployer{c: c, app: app, out: cmd.OutOrStdout(), timeout: waitTimeout}
			return d.run(ctx, cfg.Regions, cfg.PrimaryRegion, cfg.MachineConfig(img))
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "image to deploy (default: [build] image of perch.toml)")
	cmd.Flags().DurationVar(&waitTimeout, "wait-timeout", 60*time.Second, "how long each new machine may take to start")
	return cmd
}

type deployer struct {
	c       *api.Client
	app     string
	out     io.Writer
	timeout time.Duration
}

func (d *deployer) run(ctx context.Context, regions []string, primary string, mc api.MachineConfig) error {
	if _, err := d.c.GetApp(ctx, d.app); err != nil {
		if api.IsNotFound(err) {
			return fmt.Errorf("app %s does not exist: create it with `perch launch`", d.app)
		}
		return fmt.Errorf("deploy: %w", err)
	}
	existing, err := d.c.ListMachines(ctx, d.app, "")
	if err != nil {
		return fmt.Errorf("deploy: listing machines: %w", err)
	}
	plan, err := planDeploy(existing, regions, primary)
	if err != nil {
		return err
	}
	release := nextRelease(existing)
	mc = withRelease(mc, release)
	fmt.Fprintf(d.out, "Deploying %s %s (image %s) to %s\n", d.app, release, mc.Image, strings.Join(planRegions(plan), ", "))

	var done []string
	for i, st := range plan.Steps {
		m, err := d.startNew(ctx, st.Region, mc)
		if err != nil {
			msg := "the previous release keeps running"
			if len(done) > 0 {
				msg = fmt.Sprintf("%s already run %s; the other machines keep the previous release", strings.Join(done, ", "), release)
			}
			return fmt.Errorf("deploy of %s %s failed in %s: %w; %s", d.app, release, st.Region, err, msg)
		}
		if st.Replace != "" {
			if err := d.c.DestroyMachine(ctx, d.app, st.Replace, true); err != nil {
				return fmt.Errorf("deploy: new machine %s started but the old machine %s could not be destroyed: %w; remove it with `perch machine destroy --force %s`", m.ID, st.Replace, err, st.Replace)
			}
			fmt.Fprintf(d.out, "%s: destroyed old machine %s\n", st.Region, st.Replace)
		}
		if i == len(plan.Steps)-1 || plan.Steps[i+1].Region != st.Region {
			fmt.Fprintf(d.out, "%s: %s\n", st.Region, regionSummary(plan.Steps, st.Region))
			done = append(done, st.Region)
		}
	}
	for _, k := range plan.Kept {
		fmt.Fprintf(d.out, "note: %s keeps its %s on the previous release: it is not in the deploy's regions (remove with `perch scale count 0 --region %s --yes`)\n", k.Region, plural(k.Machines, "machine"), k.Region)
	}
	fmt.Fprintf(d.out, "Deployed %s %s to %s\n", d.app, release, strings.Join(done, ", "))
	return nil
}

// checkWaitTimeout keeps --wait-timeout within what the server's wait
// endpoint accepts (1-600 seconds).
func checkWaitTimeout(d time.Duration) error {
	if d < time.Second || d > 10*time.Minute {
		return fmt.Errorf("--wait-timeout must be between 1s and 10m, got %s", d)
	}
	return nil
}

func planRegions(p deployPlan) []string {
	var out []string
	for _, s := range p.Steps {
		if len(out) == 0 || out[len(out)-1] != s.Region {
			out = append(out, s.Region)
		}
	}
	return out
}

func regionSummary(steps []deployStep, region string) string {
	replaced, created := 0, 0
	for _, s := range steps {
		switch {
		case s.Region != region:
		case s.Replace != "":
			replaced++
		default:
			created++
		}
	}
	if created > 0 {
		return "created " + plural(created, "machine")
	}
	return "replaced " + plural(replaced, "machine")
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// startNew creates a machine in region and waits for it to start. If it
// does not, it shows why, destroys it and returns the reason.
func (d *deployer) startNew(ctx context.Context, region string, mc api.MachineConfig) (*api.Machine, error) {
	start := time.Now()
	m, err := d.c.CreateMachine(ctx, d.app, api.CreateMachineRequest{Region: region, Config: mc})
	if err != nil {
		return nil, fmt.Errorf("creating a machine: %w", err)
	}
	fmt.Fprintf(d.out, "%s: machine %s created\n", region, m.ID)
	werr := d.c.WaitMachine(ctx, d.app, m.ID, api.StateStarted, d.timeout)
	if werr == nil && hasChecks(m.Config) {
		fmt.Fprintf(d.out, "%s: machine %s started; waiting for its health checks\n", region, m.ID)
		werr = d.waitHealthy(ctx, m.ID, start)
	}
	if werr == nil {
		fmt.Fprintf(d.out, "%s: machine %s started (%.1fs)\n", region, m.ID, time.Since(start).Seconds())
		return m, nil
	}
	// Clean up even when the user interrupted the wait.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	reason := d.explain(cctx, region, m.ID, werr)
	if err := d.c.DestroyMachine(cctx, d.app, m.ID, true); err != nil {
		fmt.Fprintf(d.out, "%s: could not destroy the new machine %s: %v; remove it with `perch machine destroy --force %s`\n", region, m.ID, err, m.ID)
	} else {
		fmt.Fprintf(d.out, "%s: destroyed the new machine %s\n", region, m.ID)
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("interrupted while machine %s was starting: %w", m.ID, ctx.Err())
	}
	if reason == "" {
		return nil, fmt.Errorf("machine %s did not start: %w", m.ID, werr)
	}
	// The lines above showed the details; the error stays one line.
	return nil, fmt.Errorf("machine %s did not start (%s)", m.ID, reason)
}

// explain prints what became of a machine that did not start and returns
// a short reason ("failed, exit code 1"), "" if it could not find out.
func (d *deployer) explain(ctx context.Context, region, id string, werr error) string {
	msg := werr.Error()
	var he *api.HTTPError
	if errors.As(werr, &he) {
		msg = he.Message
	}
	first, _, _ := strings.Cut(msg, "\n")
	fmt.Fprintf(d.out, "%s: machine %s did not start: %s\n", region, id, first)
	m, err := d.c.GetMachine(ctx, d.app, id)
	if err != nil {
		return ""
	}
	reason := m.State
	if m.ExitCode != nil {
		reason += fmt.Sprintf(", exit code %d", *m.ExitCode)
	}
	fmt.Fprintf(d.out, "%s:   state %s\n", region, reason)
	if api.IsTimeout(werr) {
		reason = fmt.Sprintf("still %s after %s", reason, d.timeout)
	}
	if len(m.LastLogs) > 0 {
		fmt.Fprintf(d.out, "%s:   last log lines:\n", region)
		for _, l := range m.LastLogs {
			fmt.Fprintf(d.out, "%s:     | %s\n", region, l)
		}
	}
	return reason
}

func hasChecks(c api.MachineConfig) bool {
	for _, svc := range c.Services {
		if len(svc.Checks) > 0 {
			return true
		}
	}
	return false
}

// waitHealthy waits until every health check of the new machine passes, as
// Fly's deploy does: a machine that starts and then fails its checks (or
// crashes) is not a successful release.
func (d *deployer) waitHealthy(ctx context.Context, id string, start time.Time) error {
	deadline := start.Add(d.timeout)
	for {
		m, err := d.c.GetMachine(ctx, d.app, id)
		if err != nil {
			return err
		}
		if m.State != api.StateStarted {
			return fmt.Errorf("machine %s is %s while waiting for its health checks", id, m.State)
		}
		passing := len(m.Checks) > 0
		for _, c := range m.Checks {
			if c.Status == api.CheckCritical {
				return fmt.Errorf("health check %s is critical: %s", c.Name, c.Output)
			}
			if c.Status != api.CheckPassing {
				passing = false
			}
		}
		if passing {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("health checks of machine %s did not pass within %s", id, d.timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
