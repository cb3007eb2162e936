package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newSecretsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "secrets",
		Short: "Manage an app's secrets (encrypted environment variables)",
		Long: "Secrets reach every machine of the app as environment variables (a secret\n" +
			"overrides [env] of the same name) and can be written into files (config.files\n" +
			"secret_name). They are stored encrypted and never shown again: list gives names\n" +
			"and digests. A change restarts the app's machines through a rolling deploy of the\n" +
			"current release, unless --stage (then the next deploy carries it).",
	}
	cmd.AddCommand(newSecretsSetCmd(g), newSecretsImportCmd(g), newSecretsListCmd(g), newSecretsUnsetCmd(g))
	return cmd
}

type secretsFlags struct {
	stage bool
	opts  deployOptions
}

func (f *secretsFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.stage, "stage", false, "store the change without restarting machines; the next deploy applies it")
	addDeployFlags(cmd, &f.opts)
}

func newSecretsSetCmd(g *globals) *cobra.Command {
	var f secretsFlags
	cmd := &cobra.Command{
		Use:   "set NAME=VALUE ...",
		Short: "Set secrets, then restart the app's machines (unless --stage)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			values := map[string]*string{}
			for i, a := range args {
				k, v, ok := strings.Cut(a, "=")
				if !ok || k == "" {
					// Not echoed: it may be a value without its name.
					return fmt.Errorf("secrets set: argument %d is not NAME=VALUE; write e.g. DATABASE_URL=postgres://... (quoted for the shell)", i+1)
				}
				values[k] = &v
			}
			return changeSecrets(cmd, g, &f, values, "set")
		},
	}
	f.register(cmd)
	return cmd
}

func newSecretsImportCmd(g *globals) *cobra.Command {
	var f secretsFlags
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Set secrets from NAME=VALUE lines (dotenv) on stdin",
		Long: "Reads NAME=VALUE lines from stdin, as a .env file: blank lines and # comments\n" +
			"are skipped, \"export \" is allowed, values may be in double quotes (with \\n, \\\"\n" +
			"and \\\\ escapes) or single quotes (taken as they are).\n\n  perch secrets import < .env",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			values, err := parseDotenv(cmd.InOrStdin())
			if err != nil {
				return fmt.Errorf("secrets import: %w", err)
			}
			if len(values) == 0 {
				return errors.New("secrets import: stdin held no NAME=VALUE line")
			}
			return changeSecrets(cmd, g, &f, values, "import")
		},
	}
	f.register(cmd)
	return cmd
}

func newSecretsUnsetCmd(g *globals) *cobra.Command {
	var f secretsFlags
	cmd := &cobra.Command{
		Use:   "unset NAME ...",
		Short: "Remove secrets, then restart the app's machines (unless --stage)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			values := map[string]*string{}
			for _, a := range args {
				values[a] = nil
			}
			return changeSecrets(cmd, g, &f, values, "unset")
		},
	}
	f.register(cmd)
	return cmd
}

func newSecretsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the app's secrets: names, digests and times, never values",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			s, err := c.ListSecrets(cmd.Context(), app)
			if err != nil {
				return fmt.Errorf("secrets list: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), s)
			}
			renderSecrets(cmd.OutOrStdout(), s.Secrets, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func renderSecrets(w io.Writer, ss []api.AppSecret, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDIGEST\tUPDATED")
	for _, s := range ss {
		fmt.Fprintf(tw, "%s\t%s\t%s ago\n", s.Name, s.Digest, now.Sub(s.UpdatedAt).Round(time.Second))
	}
	tw.Flush()
}

// changeSecrets sends the change, then rolls the app's machines onto it
// by deploying the current release again, unless --stage.
func changeSecrets(cmd *cobra.Command, g *globals, f *secretsFlags, values map[string]*string, verb string) error {
	app, c, err := g.appClient()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	res, err := c.UpdateSecrets(ctx, app, values)
	if err != nil {
		return fmt.Errorf("secrets %s: %w", verb, err)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range values {
			if !yield(k) {
				return
			}
		}
	})
	fmt.Fprintf(out, "Secrets of %s: %s %s (secrets version %d)\n", app, pastTense(verb), strings.Join(names, ", "), res.Version)
	if f.stage {
		fmt.Fprintln(out, "Staged: machines get them at the next deploy (perch deploy).")
		return nil
	}
	if err := f.opts.check(); err != nil {
		return err
	}
	return redeployCurrent(ctx, c, app, f.opts, out, "secrets "+verb+" "+strings.Join(names, " "))
}

func pastTense(verb string) string {
	if verb == "import" {
		return "imported"
	}
	return verb
}

// redeployCurrent deploys the app's current release again (its config,
// pinned to the digest it ran), so new machines get the secrets.
func redeployCurrent(ctx context.Context, c *api.Client, app string, opts deployOptions, out io.Writer, description string) error {
	ms, err := c.ListMachines(ctx, app, "")
	if err != nil {
		return fmt.Errorf("listing machines: %w", err)
	}
	rs, err := c.ListReleases(ctx, app)
	if err != nil {
		return fmt.Errorf("listing releases: %w", err)
	}
	rs = slices.DeleteFunc(slices.Clone(rs), func(r api.Release) bool {
		return r.Status != api.ReleaseComplete && r.Status != api.ReleaseSuperseded
	})
	if len(live(ms)) == 0 || len(rs) == 0 {
		fmt.Fprintln(out, "No machines to restart: the next deploy's machines get the secrets.")
		return nil
	}
	cur := slices.MaxFunc(rs, func(a, b api.Release) int { return a.Version - b.Version })
	mcs := releaseConfigs(cur) // deploy.go
	if opts.Strategy == "" {
		opts.Strategy = cur.Strategy
	}
	fmt.Fprintf(out, "Restarting %s's machines with v%d's config to apply the secrets\n", app, cur.Version)
	d := &deployer{c: c, app: app, out: out, opts: opts}
	primary := ""
	if len(cur.Regions) > 0 {
		primary = cur.Regions[0]
	}
	return d.run(ctx, cur.Regions, primary, mcs, description)
}

// parseDotenv reads NAME=VALUE lines. Its errors name the line, never a
// value.
func parseDotenv(r io.Reader) (map[string]*string, error) {
	out := map[string]*string{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("line %d is not NAME=VALUE (nor blank, nor a # comment)", n)
		}
		v = strings.TrimSpace(v)
		switch {
		case len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"':
			u, err := strconv.Unquote(v)
			if err != nil {
				return nil, fmt.Errorf("line %d (%s): the double-quoted value has a bad escape; use \\n, \\\" or \\\\", n, k)
			}
			v = u
		case len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'':
			v = v[1 : len(v)-1]
		}
		out[k] = &v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
