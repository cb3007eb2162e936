package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/spf13/cobra"
)

func newDeployCmd(g *globals) *cobra.Command {
	var image string
	var flagRegionList []string
	var opts deployOptions
	var bf buildFlags
	var hf herokuFlags
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Roll the app's machines to a new release without dropping a request",
		Long: `Roll the app's machines to a new release described by perch.toml.

Regions are --region, else perch.toml's regions, else the regions the app
has machines in, else its primary_region; the primary region goes first. A
fly.toml without primary_region deploys with --region, or to the regions
the app already runs in. Every machine gets PRIMARY_REGION. New machines start
first; each must be ready (its checks pass, or its ports listen) and then
stay up for the smoke window before the old machines it replaces are
drained (no new requests, those in flight finish) and stopped with their
kill_signal. If a new machine fails, the deploy puts the old machines back,
removes the new ones and fails with the reason; the app keeps its previous
release. Every deploy is a release: perch releases lists them and
perch releases rollback deploys an earlier one.

Strategies ([deploy] strategy or --strategy): rolling (default, region by
region, max_unavailable at a time), immediate (all at once), canary (one
machine first, then rolling), bluegreen (a full new set, switched to at
once).

With no image (no --image, no [build] image), perch deploy builds the
Dockerfile next to perch.toml ([build] dockerfile, build-target and
[build.args]) with BuildKit, pushes it to the control plane's registry as
<app>:deployment-<id> and deploys that (docs/builds.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("from-heroku") { // heroku.go: perch.toml rewritten first
				if hf.App == "-" {
					hf.App = ""
				}
				if err := resyncFromHeroku(cmd, g, hf); err != nil {
					return err
				}
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
			dockerfile := ""
			if img == "" {
				if dockerfile = dockerfileFor(cfg, g.configPath); dockerfile == "" && cfg.Build.Dockerfile != "" {
					return fmt.Errorf("[build] dockerfile %q in %s: no such file next to it; fix the path, or set image under [build]", cfg.Build.Dockerfile, g.configPath)
				} else if dockerfile == "" && (cfg.Build.Builder != "" || len(cfg.Build.Buildpacks) > 0) {
					return buildpacksError(cfg.Build, g.configPath)
				} else if dockerfile == "" {
					return fmt.Errorf("no image to deploy: add a Dockerfile next to %s, set image under [build] in it, or pass --image", g.configPath)
				}
			}
			opts = projectDeployOptions(cmd, opts, cfg.Deploy.Strategy, cfg.Deploy.MaxUnavailable, cfg.Deploy.WaitTimeout)
			if err := opts.check(); err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			if err := checkRegions(ctx, c, flagRegionList); err != nil {
				return err
			}
			if dockerfile != "" { // build.go
				if img, err = buildAndPush(ctx, cmd.OutOrStdout(), cfg, g.configPath, dockerfile, app, bf); err != nil {
					return err
				}
			}
			regions, primary := flagRegions(flagRegionList, cfg.Regions, cfg.PrimaryRegion)
			if cfg.PrimaryRegion == "" {
				cfg.PrimaryRegion = primary // the machines' PRIMARY_REGION
			}
			d := &deployer{c: c, app: app, out: cmd.OutOrStdout(), opts: opts}
			if len(cfg.Deploy.ReleaseCommand) > 0 {
				d.release = &releaseCommand{Args: cfg.Deploy.ReleaseCommand, Timeout: cfg.Deploy.ReleaseTimeout(), Guest: cfg.Deploy.ReleaseGuest}
			}
			for _, m := range cfg.Mounts { // volumes.go: the snapshot settings of the volumes it makes
				if d.mounts == nil {
					d.mounts = map[string]config.Mount{}
				}
				d.mounts[m.Source] = m
			}
			if err := d.run(ctx, regions, primary, cfg.MachineConfigs(img), ""); err != nil {
				return err
			}
			return applyAutoscale(ctx, c, app, cfg.Autoscale, cmd.OutOrStdout()) // autoscale.go
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "image to deploy (default: [build] image of perch.toml, else the Dockerfile built)")
	cmd.Flags().StringArrayVar(&bf.Args, "build-arg", nil, "a Dockerfile ARG value, NAME=VALUE (repeatable; over [build.args])")
	cmd.Flags().StringVar(&bf.Target, "build-target", "", "the Dockerfile stage to build (default: [build] build-target, else the last)")
	cmd.Flags().Int64Var(&bf.ContextMax, "build-context-max", 500, "largest build context sent to the builder, in MB, after .dockerignore")
	cmd.Flags().StringSliceVar(&flagRegionList, "region", nil, "regions to deploy to, e.g. --region iad,ams (default: perch.toml's regions, else the app's regions, else primary_region); the first is the primary region when perch.toml names none")
	addDeployFlags(cmd, &opts)
	cmd.Flags().StringVar(&hf.App, "from-heroku", "", "first re-sync from Heroku: the app's newest release (slug, config vars, formation) into perch.toml and the registry (APP: default [env] HEROKU_APP_NAME)")
	cmd.Flags().Lookup("from-heroku").NoOptDefVal = "-"
	hf.register(cmd)
	return cmd
}

// addDeployFlags adds the flags of a rollout (deploy, releases rollback).
func addDeployFlags(cmd *cobra.Command, opts *deployOptions) {
	cmd.Flags().StringVar(&opts.Strategy, "strategy", "", "rolling, immediate, canary or bluegreen (default: [deploy] strategy, else rolling)")
	cmd.Flags().Float64Var(&opts.MaxUnavailable, "max-unavailable", 0, "machines per region a rolling deploy replaces at once: a count, or a fraction below 1 (default: [deploy] max_unavailable, else 1)")
	cmd.Flags().DurationVar(&opts.WaitTimeout, "wait-timeout", 60*time.Second, "how long each new machine may take to be ready and pass its smoke check (default: [deploy] wait_timeout, else 60s)")
	cmd.Flags().DurationVar(&opts.Smoke, "smoke-window", 10*time.Second, "how long each new machine must stay up, without exiting, restarting or failing a check, once ready (0: no smoke check)")
}

// projectDeployOptions fills what the flags left unset from [deploy].
func projectDeployOptions(cmd *cobra.Command, o deployOptions, strategy string, maxUnavailable float64, wait time.Duration) deployOptions {
	if !cmd.Flags().Changed("strategy") && o.Strategy == "" {
		o.Strategy = strategy
	}
	if !cmd.Flags().Changed("max-unavailable") {
		o.MaxUnavailable = maxUnavailable
	}
	if !cmd.Flags().Changed("wait-timeout") && wait > 0 {
		o.WaitTimeout = wait
	}
	return o
}

type deployer struct {
	c    *api.Client
	app  string
	out  io.Writer
	opts deployOptions
	// release, if set, runs before any machine is replaced (release.go).
	release *releaseCommand
	// mounts are perch.toml's [[mounts]] by source: the volumes a deploy
	// makes get their snapshot settings (volumes.go).
	mounts map[string]config.Mount
}

// run deploys a new release to the plan's regions: mcs is the machine
// config of each process group. description says what the release is (a
// rollback) in perch releases.
func (d *deployer) run(ctx context.Context, regions []string, primary string, mcs map[string]api.MachineConfig, description string) error {
	if len(mcs) == 0 {
		return errors.New("deploy: no process group to deploy")
	}
	groupNames := slices.Sorted(maps.Keys(mcs))
	main := mainGroup(groupNames)
	if _, err := d.c.GetApp(ctx, d.app); err != nil {
		if api.IsNotFound(err) {
			return fmt.Errorf("app %s does not exist: create it with `perch launch`", d.app)
		}
		return fmt.Errorf("deploy: %w", err)
	}
	all, err := d.c.ListMachines(ctx, d.app, "")
	if err != nil {
		return fmt.Errorf("deploy: listing machines: %w", err)
	}
	existing := live(all)
	plan, err := planDeploy(existing, regions, primary, groupNames)
	if err != nil {
		return err
	}
	mcs = maps.Clone(mcs)
	for g, c := range mcs {
		mcs[g] = withPrimaryRegion(c, plan)
	}
	mc := mcs[main]
	req := api.CreateReleaseRequest{
		Image: mc.Image, Config: mc, Strategy: cmp.Or(d.opts.Strategy, strategyRolling), Regions: planRegions(plan), Description: description,
	}
	if len(mcs) > 1 || main != config.DefaultProcessGroup {
		req.Processes = mcs
	}
	rel, err := d.c.CreateRelease(ctx, d.app, req)
	if err != nil {
		return fmt.Errorf("deploy: recording the release: %w", err)
	}
	strategy := req.Strategy
	release := "v" + strconv.Itoa(rel.Version)
	for g, c := range mcs {
		mcs[g] = withRelease(c, release)
	}
	mc = mcs[main]
	r := &rollout{d: d, mc: mc, mcs: mcs}
	if r.mountsVolumes() {
		// Machines on volumes are replaced in place whatever the strategy
		// (execute, volumes.go): say so, not the flag.
		strategy = "in place (machines mount volumes)"
		for _, c := range mcs {
			if len(c.Mounts) == 0 { // [[mounts]] processes names other groups
				strategy = "in place for machines on volumes, " + req.Strategy + " for the others"
				break
			}
		}
	}
	fmt.Fprintf(d.out, "Deploying %s %s (image %s) to %s, strategy %s\n", d.app, release, mc.Image, strings.Join(planRegions(plan), ", "), strategy)
	if len(mcs) > 1 {
		fmt.Fprintf(d.out, "Process groups: %s\n", strings.Join(groupNames, ", "))
	}
	removedGroups := announceRemoved(d.out, plan.Removed)

	if d.release != nil {
		region := primary
		if rs := planRegions(plan); len(rs) > 0 {
			region = rs[0]
		}
		if err := d.runRelease(ctx, d.release, region, mc); err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if _, uerr := d.c.UpdateRelease(cctx, d.app, rel.Version, api.UpdateReleaseRequest{Status: api.ReleaseFailed, Reason: err.Error()}); uerr != nil {
				fmt.Fprintf(d.out, "warning: could not record the release as failed: %v\n", uerr)
			}
			prev := "the app keeps the release it had"
			if v := runningRelease(existing); v != "" {
				prev = "the app keeps running " + v
			}
			return fmt.Errorf("deploy of %s %s stopped before any machine was replaced: %w; %s", d.app, release, err, prev)
		}
	}
	if err := r.execute(ctx, groups(plan, existing)); err != nil {
		reason := d.explainFailure(ctx, err)
		r.undo(ctx)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, uerr := d.c.UpdateRelease(cctx, d.app, rel.Version, api.UpdateReleaseRequest{Status: api.ReleaseFailed, Reason: reason}); uerr != nil {
			fmt.Fprintf(d.out, "warning: could not record the release as failed: %v\n", uerr)
		}
		prev := "the app keeps the release it had"
		if v := runningRelease(existing); v != "" {
			prev = "the app keeps running " + v
		}
		if ctx.Err() != nil {
			return fmt.Errorf("deploy of %s %s interrupted; %s", d.app, release, prev)
		}
		return fmt.Errorf("deploy of %s %s failed: %s; %s. Fix the release and deploy again; `perch logs` shows the machines' output", d.app, release, reason, prev)
	}
	r.finish(ctx)
	d.removeGroups(ctx, plan.Removed, removedGroups)
	ref := ""
	for _, m := range append(r.created, r.updated...) {
		if got, err := d.c.GetMachine(ctx, d.app, m.ID); err == nil && got.ImageRef.Digest != "" {
			ref = got.ImageRef.Ref()
			break
		}
	}
	if _, err := d.c.UpdateRelease(ctx, d.app, rel.Version, api.UpdateReleaseRequest{Status: api.ReleaseComplete, ImageRef: ref}); err != nil {
		fmt.Fprintf(d.out, "warning: could not record the release as complete: %v\n", err)
	}
	for _, k := range plan.Kept {
		fmt.Fprintf(d.out, "note: %s keeps its %s on the previous release: it is not in the deploy's regions (remove with `perch scale count 0 --region %s --yes`)\n", k.Region, plural(k.Machines, "machine"), k.Region)
	}
	fmt.Fprintf(d.out, "Deployed %s %s to %s\n", d.app, release, strings.Join(planRegions(plan), ", "))
	return nil
}

// mainGroup is the group a release records as its config and runs the
// release command in: the default group if present, else the first.
func mainGroup(sorted []string) string {
	if slices.Contains(sorted, config.DefaultProcessGroup) {
		return config.DefaultProcessGroup
	}
	return sorted[0]
}

// announceRemoved says, before anything changes, which process groups the
// deploy removes (their machines are destroyed once it succeeded), and
// returns their names.
func announceRemoved(out io.Writer, removed []api.Machine) []string {
	count := map[string]int{}
	var names []string
	for _, m := range removed {
		g := processGroup(m)
		if count[g] == 0 {
			names = append(names, g)
		}
		count[g]++
	}
	for _, g := range names {
		fmt.Fprintf(out, "Process group %s is no longer in [processes]: its %s will be destroyed once the deploy succeeds\n", g, plural(count[g], "machine"))
	}
	return names
}

// removeGroups drains and destroys the machines of process groups the
// release no longer has.
func (d *deployer) removeGroups(ctx context.Context, removed []api.Machine, names []string) {
	_ = parallel(removed, func(m api.Machine) error {
		if m.State == api.StateStarted || m.State == api.StateStarting {
			if err := stopAndWait(ctx, d.c, d.app, m); err != nil {
				fmt.Fprintf(d.out, "%s: could not stop machine %s of the removed group %s: %v; remove it with `perch machine destroy --force %s`\n", m.Region, m.ID, processGroup(m), err, m.ID)
				return nil
			}
		}
		if err := d.c.DestroyMachine(ctx, d.app, m.ID, false); err != nil {
			fmt.Fprintf(d.out, "%s: could not destroy machine %s of the removed group %s: %v; remove it with `perch machine destroy --force %s`\n", m.Region, m.ID, processGroup(m), err, m.ID)
			return nil
		}
		fmt.Fprintf(d.out, "%s: destroyed machine %s of the removed group %s\n", m.Region, m.ID, processGroup(m))
		return nil
	})
	if len(names) > 0 {
		fmt.Fprintf(d.out, "Removed process groups: %s\n", strings.Join(names, ", "))
	}
}

// releaseConfigs is the machine config of each process group of a
// release, pinned to the digest it ran.
func releaseConfigs(r api.Release) map[string]api.MachineConfig {
	mcs := maps.Clone(r.Processes)
	if len(mcs) == 0 {
		mcs = map[string]api.MachineConfig{cmp.Or(r.Config.Metadata[config.MetaProcessGroup], config.DefaultProcessGroup): r.Config}
	}
	for g, mc := range mcs {
		if r.ImageRef != "" {
			mc.Image = r.ImageRef
		}
		mcs[g] = mc
	}
	return mcs
}

// runningRelease is the release the app's machines run ("v3"), "" if
// they run none or several.
func runningRelease(ms []api.Machine) string {
	v := ""
	for _, m := range ms {
		r := m.Config.Metadata[metaRelease]
		if r == "" || (v != "" && r != v) {
			return ""
		}
		v = r
	}
	return v
}

// explainFailure prints what became of the machine that failed the
// deploy (its state, exit code and last log lines) and returns a one-line
// reason.
func (d *deployer) explainFailure(ctx context.Context, err error) string {
	var mf *machineFailure
	if !errors.As(err, &mf) {
		return err.Error()
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	region, id := mf.m.Region, mf.m.ID
	fmt.Fprintf(d.out, "%s: machine %s %s\n", region, id, mf.reason)
	m := &mf.m
	if got, err := d.c.GetMachine(cctx, d.app, id); err == nil {
		m = got
	}
	d.printLastLines(cctx, region, id, m.LastLogs, "last log lines")
	return mf.Error()
}

// printLastLines prints a machine's last log lines under label: lines,
// else from the log stream.
func (d *deployer) printLastLines(ctx context.Context, region, id string, lines []string, label string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	// A machine's last lines reach the log stream a moment after it
	// exited; give them that moment.
	for deadline := time.Now().Add(3 * time.Second); len(lines) == 0 && time.Now().Before(deadline); {
		if lines = d.lastLogLines(cctx, id, 10); len(lines) == 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if len(lines) > 0 {
		fmt.Fprintf(d.out, "%s:   %s:\n", region, label)
		for _, l := range lines {
			fmt.Fprintf(d.out, "%s:     | %s\n", region, l)
		}
	}
}

// lastLogLines are the last n lines a machine printed, from the log stream.
func (d *deployer) lastLogLines(ctx context.Context, id string, n int) []string {
	var out []string
	_ = d.c.Logs(ctx, d.app, api.LogOptions{Machine: id, Lines: n}, func(l api.LogLine) error {
		out = append(out, l.Message)
		return nil
	})
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
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

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// checkRegions fails before anything changes when --region names a region
// the control plane does not know.
func checkRegions(ctx context.Context, c *api.Client, regions []string) error {
	if len(regions) == 0 {
		return nil
	}
	known, err := c.ListRegions(ctx)
	if err != nil {
		return fmt.Errorf("deploy: listing regions: %w", err)
	}
	var codes []string
	for _, r := range known {
		codes = append(codes, r.Code)
	}
	for _, r := range regions {
		if !slices.Contains(codes, r) {
			return fmt.Errorf("--region %q is not a region; `perch regions --all` lists them: %s", r, strings.Join(codes, ", "))
		}
	}
	return nil
}
