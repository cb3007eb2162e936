package cli

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newReleasesCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "releases",
		Short: "List the app's releases, newest first; roll back to one",
		Long: `List the app's releases, newest first: version, status, image digest,
config, who deployed it and when. Every perch deploy records one.

perch releases rollback [VERSION] deploys an earlier release again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			rs, err := c.ListReleases(cmd.Context(), app)
			if err != nil {
				return fmt.Errorf("releases: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), rs)
			}
			renderReleases(cmd.OutOrStdout(), app, rs, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newRollbackCmd(g))
	return cmd
}

func renderReleases(w io.Writer, app string, rs []api.Release, now time.Time) {
	if len(rs) == 0 {
		fmt.Fprintf(w, "%s has no releases yet: perch deploy makes one.\n", app)
		return
	}
	t := &table{header: []string{"VERSION", "STATUS", "IMAGE", "DIGEST", "CONFIG", "STRATEGY", "USER", "AGE"}}
	for _, r := range rs {
		var notes []string
		if r.Description != "" {
			notes = append(notes, r.Description)
		}
		if r.Reason != "" {
			notes = append(notes, "failed: "+r.Reason)
		}
		t.add([]string{
			"v" + strconv.Itoa(r.Version), r.Status, r.Image, shortDigest(r.ImageRef),
			configHash(r.Config), cmp.Or(r.Strategy, strategyRolling), cmp.Or(r.User, "-"),
			formatAge(now.Sub(r.CreatedAt)),
		}, notes...)
	}
	t.write(w)
}

// shortDigest is the first 12 hex digits of a reference's digest.
func shortDigest(ref string) string {
	_, d, ok := strings.Cut(ref, "@sha256:")
	if !ok {
		return "-"
	}
	return d[:min(12, len(d))]
}

func newRollbackCmd(g *globals) *cobra.Command {
	var opts deployOptions
	cmd := &cobra.Command{
		Use:   "rollback [VERSION]",
		Short: "Deploy an earlier release again (default: the last good one before the current)",
		Long: `Deploy an earlier release again, by its image digest and config, as a new
release, with the same checks as perch deploy (ready, smoke check, no
request lost). Without VERSION: the last release that completed before the
one the app runs now.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			if err := opts.check(); err != nil {
				return err
			}
			ctx, stop := interruptible(cmd)
			defer stop()
			rs, err := c.ListReleases(ctx, app)
			if err != nil {
				return fmt.Errorf("rollback: %w", err)
			}
			want := 0
			if len(args) == 1 {
				if want, err = strconv.Atoi(strings.TrimPrefix(args[0], "v")); err != nil || want < 1 {
					return fmt.Errorf("release %q is not a version; write e.g. 3 or v3 (perch releases lists them)", args[0])
				}
			}
			target, err := rollbackTarget(rs, want)
			if err != nil {
				return err
			}
			return rollbackTo(ctx, c, app, target, opts, cmd.OutOrStdout())
		},
	}
	addDeployFlags(cmd, &opts)
	return cmd
}

// rollbackTarget picks the release to go back to: version want, or the
// newest good release older than the newest good one.
func rollbackTarget(rs []api.Release, want int) (api.Release, error) {
	good := func(r api.Release) bool {
		return r.Status == api.ReleaseComplete || r.Status == api.ReleaseSuperseded
	}
	if want > 0 {
		for _, r := range rs {
			if r.Version == want {
				return r, nil
			}
		}
		return api.Release{}, fmt.Errorf("there is no release v%d; perch releases lists them", want)
	}
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b api.Release) int { return b.Version - a.Version })
	current := -1
	for i, r := range rs {
		if good(r) {
			if current < 0 {
				current = i
				continue
			}
			return r, nil
		}
	}
	if current < 0 {
		return api.Release{}, fmt.Errorf("no release has completed yet; there is nothing to roll back to")
	}
	return api.Release{}, fmt.Errorf("v%d is the only release that completed; there is nothing earlier to roll back to", rs[current].Version)
}

// rollbackTo deploys release r again, pinned to the digest it ran.
func rollbackTo(ctx context.Context, c *api.Client, app string, r api.Release, opts deployOptions, out io.Writer) error {
	mcs := releaseConfigs(r) // deploy.go
	if opts.Strategy == "" {
		opts.Strategy = r.Strategy
	}
	fmt.Fprintf(out, "Rolling %s back to v%d (%s)\n", app, r.Version, cmp.Or(r.ImageRef, r.Config.Image))
	d := &deployer{c: c, app: app, out: out, opts: opts}
	primary := ""
	if len(r.Regions) > 0 {
		primary = r.Regions[0]
	}
	return d.run(ctx, r.Regions, primary, mcs, fmt.Sprintf("rollback to v%d", r.Version))
}
