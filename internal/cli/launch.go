package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/config"
	"github.com/spf13/cobra"
)

func newLaunchCmd(g *globals) *cobra.Command {
	var image, name, dir, org, dockerfile string
	var regions []string
	var port int
	var force bool
	var hf herokuFlags
	var smoke time.Duration
	cmd := &cobra.Command{
		Use:   "launch [--image REF | --dockerfile PATH | --from-heroku APP]",
		Short: "Create an app and write its perch.toml (then run perch deploy)",
		Long: `Create an app and write its perch.toml (then run perch deploy).

With --image the app runs that image. Without it, a Dockerfile in --dir
(or --dockerfile) is what perch deploy builds: perch.toml gets
[build] dockerfile, and the HTTP port is the Dockerfile's EXPOSE unless
--port is given. With --from-heroku, a Heroku app's latest slug, config
vars and formation become the app, and it is deployed (docs/heroku.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if hf.App != "" && (image != "" || dockerfile != "") {
				return errors.New("give --from-heroku APP (a Heroku app to move, docs/heroku.md) alone: it brings its own image, not --image or --dockerfile")
			}
			if port < 1 || port > 65535 {
				return fmt.Errorf("--port must be 1-65535, got %d", port)
			}
			var exposed int
			if image == "" && hf.App == "" { // from source (build.go)
				var err error
				if dockerfile, exposed, err = launchDockerfile(dir, dockerfile); err != nil {
					return err
				}
			} else if dockerfile != "" {
				return errors.New("give --image (a built image) or --dockerfile (built by perch deploy), not both")
			}
			if exposed > 0 && !cmd.Flags().Changed("port") {
				port = exposed
			}
			path := filepath.Join(dir, "perch.toml")
			if cmd.Flags().Changed("config") {
				path = g.configPath
			}
			if _, err := os.Stat(path); err == nil && !force {
				return fmt.Errorf("%s already exists: deploy it with `perch deploy`, or pass --force to replace it", path)
			} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("launch: %w", err)
			}
			if hf.App != "" { // heroku.go
				return launchFromHeroku(cmd, g, hf, name, org, path, regions, smoke)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			regions, err := launchRegions(ctx, c, regions)
			if err != nil {
				return err
			}
			app, err := createApp(ctx, c, cmp.Or(name, g.app), org)
			if err != nil {
				return err
			}
			cfg := config.New(app.Name, image, regions)
			if dockerfile != "" {
				// perch deploy reads it relative to perch.toml's
				// directory, the build context.
				if cfg.Build.Dockerfile, err = relativeTo(filepath.Dir(path), dockerfile); err != nil {
					return fmt.Errorf("launch: %w", err)
				}
			}
			cfg.HTTPService.InternalPort = port
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return fmt.Errorf("launch: %w", err)
			}
			if err := cfg.Write(path); err != nil {
				return fmt.Errorf("launch: app %s was created but its config could not be written: %w", app.Name, err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Created app %s in organisation %s (regions %s)\n", app.Name, app.Org, strings.Join(regions, ", "))
			if dockerfile != "" {
				fmt.Fprintf(w, "Found %s: perch deploy builds it (BuildKit) and runs the image; the app listens on port %d\n", dockerfile, port)
			}
			fmt.Fprintf(w, "Wrote %s\n", path)
			if path == "perch.toml" {
				fmt.Fprintln(w, "Now run: perch deploy")
			} else {
				fmt.Fprintf(w, "Now run: perch deploy --config %s\n", path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "image the app runs (default: build the Dockerfile in --dir on each perch deploy)")
	cmd.Flags().StringVar(&dockerfile, "dockerfile", "", "Dockerfile perch deploy builds, relative to --dir (default: Dockerfile)")
	cmd.Flags().StringSliceVarP(&regions, "regions", "r", nil, "regions to run in, primary first (default: the first region with a host)")
	cmd.Flags().StringVarP(&name, "name", "n", "", "app name (default: a generated one)")
	cmd.Flags().IntVarP(&port, "port", "p", 8080, "port the app's HTTP server listens on (default: the Dockerfile's EXPOSE, else 8080)")
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write perch.toml in")
	cmd.Flags().StringVar(&org, "org", "", "organisation the app lives in (default: your token's)")
	cmd.Flags().BoolVar(&force, "force", false, "replace an existing perch.toml")
	cmd.Flags().StringVar(&hf.App, "from-heroku", "", "move this Heroku app (Turboku): its latest slug, config vars and formation, then deploy (docs/heroku.md)")
	hf.register(cmd)
	cmd.Flags().DurationVar(&smoke, "smoke-window", 10*time.Second, "with --from-heroku: the deploy's smoke window (see perch deploy)")
	return cmd
}

// launchDockerfile finds the Dockerfile perch launch writes into [build]
// (name, relative to dir; "" means Dockerfile), as a path, and the port
// its last EXPOSE names (0: none), as fly launch does.
func launchDockerfile(dir, name string) (string, int, error) {
	rel := cmp.Or(name, "Dockerfile")
	p := rel
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	b, err := os.ReadFile(p)
	switch {
	case errors.Is(err, fs.ErrNotExist) && name == "":
		return "", 0, fmt.Errorf("launch: no --image and no Dockerfile in %s: pass --image REF to run a built image, add a Dockerfile for perch deploy to build (buildpacks are not supported), or --from-heroku APP to move a Heroku app", dir)
	case err != nil:
		return "", 0, fmt.Errorf("launch: --dockerfile %s: %w", name, err)
	}
	return p, exposedPort(string(b)), nil
}

// relativeTo is p relative to dir when it is inside dir, else absolute.
func relativeTo(dir, p string) (string, error) {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	absP, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	if rel, err := filepath.Rel(absDir, absP); err == nil && filepath.IsLocal(rel) {
		return filepath.ToSlash(rel), nil
	}
	return absP, nil
}

// exposedPort is the first port of the Dockerfile's last EXPOSE with a
// literal port (EXPOSE 8080, EXPOSE 8080/tcp 9090), or 0.
func exposedPort(dockerfile string) int {
	port := 0
	for _, line := range strings.Split(dockerfile, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.EqualFold(f[0], "EXPOSE") {
			continue
		}
		num, _, _ := strings.Cut(f[1], "/")
		if n, err := strconv.Atoi(num); err == nil && n >= 1 && n <= 65535 {
			port = n
		}
	}
	return port
}

// launchRegions checks the wanted regions against the server's, or picks
// the first region that has a host.
func launchRegions(ctx context.Context, c *api.Client, want []string) ([]string, error) {
	known, err := c.ListRegions(ctx)
	if err != nil {
		return nil, fmt.Errorf("launch: listing regions: %w", err)
	}
	var codes, withHosts []string
	for _, r := range known {
		codes = append(codes, r.Code)
		if r.Hosts > 0 {
			withHosts = append(withHosts, r.Code)
		}
	}
	if len(want) == 0 {
		if len(withHosts) == 0 {
			return nil, errors.New("launch: no region has a host yet: start an agent (`perch agent --region CODE`) or pass --regions")
		}
		return withHosts[:1], nil
	}
	var out []string
	for _, r := range want {
		r = strings.TrimSpace(r)
		if !slices.Contains(codes, r) {
			return nil, fmt.Errorf("launch: unknown region %q; regions with hosts: %s (all: `perch regions --all`)", r, strings.Join(withHosts, ", "))
		}
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// createApp creates the app named name, or under a generated name, trying
// a few in case one is taken, in organisation org ("": the token's own).
func createApp(ctx context.Context, c *api.Client, name, org string) (*api.App, error) {
	if name != "" {
		app, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: name, Org: org})
		if api.IsConflict(err) {
			return nil, fmt.Errorf("app name %s is taken; pick another with --name", name)
		}
		if err != nil {
			return nil, fmt.Errorf("launch: creating app %s: %w", name, err)
		}
		return app, nil
	}
	for range 5 {
		app, err := c.CreateApp(ctx, api.CreateAppRequest{AppName: generateName(rand.IntN), Org: org})
		if api.IsConflict(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("launch: creating app: %w", err)
		}
		return app, nil
	}
	return nil, errors.New("launch: every generated app name was taken; pick one with --name")
}

var (
	nameAdjectives = []string{"quiet", "bold", "swift", "misty", "sunny", "brave", "calm", "eager", "gentle", "lively", "proud", "rapid", "silent", "steady", "wild", "young", "frosty", "golden", "hidden", "lucky"}
	nameNouns      = []string{"perch", "heron", "robin", "falcon", "sparrow", "finch", "owl", "wren", "lark", "swift", "crane", "kite", "plover", "tern", "egret", "osprey", "raven", "thrush", "warbler", "pipit"}
)

// generateName is adjective-noun-NNNN; intn is rand.IntN, or a fixed one in
// tests.
func generateName(intn func(int) int) string {
	return fmt.Sprintf("%s-%s-%04d", nameAdjectives[intn(len(nameAdjectives))], nameNouns[intn(len(nameNouns))], intn(10000))
}
