package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/geo"
	"github.com/perchhq/perch/internal/heroku"
	"github.com/spf13/cobra"
)

// herokuFlags are the flags of launch --from-heroku and deploy
// --from-heroku.
type herokuFlags struct {
	App        string // --from-heroku
	Token      string // --heroku-token, else $HEROKU_API_KEY
	API        string // --heroku-api
	StackImage string // --stack-image
}

func (f *herokuFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.Token, "heroku-token", "", "Heroku API token (default: $HEROKU_API_KEY; `heroku auth:token` prints one)")
	cmd.Flags().StringVar(&f.API, "heroku-api", heroku.DefaultAPI, "Heroku Platform API base URL")
	cmd.Flags().StringVar(&f.StackImage, "stack-image", "", "base image for the slug (default: heroku/heroku:<N> of the stack heroku-<N>, from the control plane's registry)")
}

func (f *herokuFlags) client() (*heroku.Client, error) {
	tok := cmp.Or(f.Token, os.Getenv("HEROKU_API_KEY"))
	if tok == "" {
		return nil, errors.New("no Heroku token: pass --heroku-token or set HEROKU_API_KEY (`heroku auth:token` prints yours)")
	}
	return heroku.NewClient(f.API, tok), nil
}

// Dyno metadata env vars (Heroku's runtime-dyno-metadata names): the app
// and release perch.toml came from; deploy --from-heroku reads the app.
const (
	envHerokuApp     = "HEROKU_APP_NAME"
	envHerokuRelease = "HEROKU_RELEASE_VERSION"
	envHerokuCommit  = "HEROKU_SLUG_COMMIT"
)

// registryTarget is the control plane's registry: host, plain HTTP or
// not, and the credentials to push with.
type registryTarget struct {
	Host     string
	Insecure bool
	Auth     authn.Authenticator
}

func controlPlaneRegistry() (registryTarget, error) {
	creds, err := currentCredentials()
	if err != nil {
		return registryTarget{}, err
	}
	// A cluster's servers, comma-separated: images go to the first's
	// registry (each server keeps its own blobs; docs/servers.md).
	first, _, _ := strings.Cut(creds.APIURL, ",")
	u, err := url.Parse(first)
	if err != nil || u.Host == "" {
		return registryTarget{}, fmt.Errorf("the API URL %q is not a URL; log in again with `perch auth login`", creds.APIURL)
	}
	return registryTarget{Host: u.Host, Insecure: u.Scheme == "http", Auth: &authn.Basic{Username: "x", Password: creds.Token}}, nil
}

func (r registryTarget) ref(s string) (name.Reference, []remote.Option, error) {
	var opts []name.Option
	if r.Insecure && strings.HasPrefix(s, r.Host+"/") {
		opts = append(opts, name.Insecure) // the control plane's plain-HTTP registry only
	}
	ref, err := name.ParseReference(s, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("image reference %q: %w", s, err)
	}
	var ropts []remote.Option
	if ref.Context().RegistryStr() == r.Host {
		ropts = append(ropts, remote.WithAuth(r.Auth))
	} else {
		ropts = append(ropts, remote.WithAuthFromKeychain(authn.DefaultKeychain))
	}
	return ref, ropts, nil
}

// stackImage is the stack's base image: --stack-image, else
// heroku/heroku:<N> for heroku-<N> in the control plane's registry.
func stackImage(ctx context.Context, reg registryTarget, stack, flag string) (v1.Image, string, error) {
	want := flag
	if want == "" {
		n, ok := strings.CutPrefix(stack, "heroku-")
		if _, err := strconv.Atoi(n); !ok || err != nil {
			return nil, "", fmt.Errorf("stack %q has no base image Perch knows (heroku-22, heroku-24 are heroku/heroku:22, :24): name one with --stack-image REF", stack)
		}
		want = reg.Host + "/heroku/heroku:" + n
	}
	ref, opts, err := reg.ref(want)
	if err != nil {
		return nil, "", err
	}
	img, err := remote.Image(ref, append(opts, remote.WithContext(ctx))...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && (te.StatusCode == 404 || te.StatusCode == 401 || te.StatusCode == 403) || flag == "" {
			if flag != "" {
				return nil, "", fmt.Errorf("stack %s: base image %s: %w; check --stack-image", stack, want, err)
			}
			return nil, "", fmt.Errorf("stack %s has no base image: %s is not in the control plane's registry (%v); copy it there (e.g. crane copy docker.io/heroku/heroku:%s %s) or pass --stack-image REF", stack, want, err, strings.TrimPrefix(stack, "heroku-"), want)
		}
		return nil, "", fmt.Errorf("stack %s: base image %s: %w", stack, want, err)
	}
	return img, want, nil
}

// readHeroku reads everything of the app Turboku needs, and explains an
// app that has no slug to run.
func readHeroku(ctx context.Context, hc *heroku.Client, app string) (heroku.Source, error) {
	var src heroku.Source
	a, err := hc.App(ctx, app)
	if err != nil {
		return src, err
	}
	if err := heroku.CheckSlugApp(a, nil); err != nil {
		return src, err
	}
	rel, err := hc.LatestRelease(ctx, a.Name)
	if err != nil {
		return src, err
	}
	if err := heroku.CheckSlugApp(a, rel); err != nil {
		return src, err
	}
	slug, err := hc.Slug(ctx, a.Name, rel.Slug.ID)
	if err != nil {
		return src, err
	}
	fs, err := hc.Formation(ctx, a.Name)
	if err != nil {
		return src, err
	}
	vars, err := hc.ConfigVars(ctx, a.Name)
	if err != nil {
		return src, err
	}
	return heroku.Source{App: a, Release: rel, Slug: slug, Formation: fs, ConfigVars: vars}, nil
}

// herokuImage downloads the release's slug, checks it, builds the image
// and pushes it to the control plane's registry as <app>:heroku-v<N>.
func herokuImage(ctx context.Context, out io.Writer, src heroku.Source, app, stackFlag string) (string, error) {
	reg, err := controlPlaneRegistry()
	if err != nil {
		return "", err
	}
	stack := cmp.Or(src.Slug.Stack.Name, src.App.Stack.Name)
	base, baseRef, err := stackImage(ctx, reg, stack, stackFlag)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp("", "perch-heroku-")
	if err != nil {
		return "", fmt.Errorf("heroku: %w", err)
	}
	defer os.RemoveAll(tmp)
	t0 := time.Now()
	path, err := heroku.DownloadSlug(ctx, nil, src.Slug, tmp)
	if errors.Is(err, heroku.ErrNoChecksum) {
		fmt.Fprintf(out, "warning: Heroku gave no checksum for slug %s; using it unverified\n", src.Slug.ID)
	} else if err != nil {
		return "", err
	} else {
		fmt.Fprintf(out, "Downloaded slug %s (%s verified) in %.1fs\n", src.Slug.ID, *src.Slug.Checksum, time.Since(t0).Seconds())
	}
	labels := map[string]string{
		"heroku.app": src.App.Name, "heroku.release": strconv.Itoa(src.Release.Version),
		"heroku.slug": src.Slug.ID, "heroku.stack": stack, "heroku.base": baseRef,
	}
	img, info, err := heroku.BuildImage(heroku.ImageOptions{Base: base, SlugPath: path, ProcessTypes: src.Slug.ProcessTypes, Stack: stack, Labels: labels, TmpDir: tmp})
	if err != nil {
		return "", err
	}
	refStr := fmt.Sprintf("%s/%s:heroku-v%d-%s", reg.Host, app, src.Release.Version, deploymentID())
	ref, opts, err := reg.ref(refStr)
	if err != nil {
		return "", err
	}
	user := cmp.Or(info.User, "root")
	if info.UserName != "" {
		user += " (" + info.UserName + ")"
	}
	fmt.Fprintf(out, "Building %s: %s + slug (%d files at /app, user %s) + launcher\n", refStr, baseRef, info.AppFiles, user)
	if err := remote.Write(ref, img, append(opts, remote.WithContext(ctx))...); err != nil {
		return "", fmt.Errorf("pushing %s: %w", refStr, err)
	}
	fmt.Fprintf(out, "Pushed %s in %.1fs\n", refStr, time.Since(t0).Seconds())
	return refStr, nil
}

// herokuRegions: Heroku's region's Perch region (or the nearest with a
// host) first, then --regions.
func herokuRegions(ctx context.Context, c *api.Client, herokuRegion string, extra []string) ([]string, error) {
	known, err := c.ListRegions(ctx)
	if err != nil {
		return nil, fmt.Errorf("launch: listing regions: %w", err)
	}
	var withHosts []string
	for _, r := range known {
		if r.Hosts > 0 {
			withHosts = append(withHosts, r.Code)
		}
	}
	if len(withHosts) == 0 {
		return nil, errors.New("launch: no region has a host yet: start an agent (`perch agent --region CODE`)")
	}
	primary := heroku.Regions[herokuRegion]
	if primary == "" {
		primary = "iad"
	}
	if !slices.Contains(withHosts, primary) {
		if near := geo.Default().Nearest(primary, withHosts); len(near) > 0 {
			primary = near[0]
		} else {
			primary = withHosts[0]
		}
	}
	rest, err := launchRegions(ctx, c, extra)
	if err != nil && len(extra) > 0 {
		return nil, err
	}
	out := []string{primary}
	if len(extra) > 0 {
		for _, r := range rest {
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// writePlan writes the plan's perch.toml at path.
func writePlan(p *heroku.Plan, path string) error {
	data, err := p.Marshal()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// syncHeroku reads the Heroku app, pushes its image, stores its config
// vars as secrets and writes perch.toml: what launch and deploy
// --from-heroku share. It returns the plan.
func syncHeroku(ctx context.Context, out io.Writer, c *api.Client, hf herokuFlags, src heroku.Source, app string, regions []string, path string) (*heroku.Plan, error) {
	ref, err := herokuImage(ctx, out, src, app, hf.StackImage)
	if err != nil {
		return nil, err
	}
	p := heroku.NewPlan(src, app, ref, regions)
	p.Config.Env[envHerokuApp] = src.App.Name
	p.Config.Env[envHerokuRelease] = "v" + strconv.Itoa(src.Release.Version)
	if src.Slug.Commit != nil {
		p.Config.Env[envHerokuCommit] = *src.Slug.Commit
	}
	if len(p.Secrets) > 0 {
		vals := map[string]*string{}
		for k, v := range p.Secrets {
			vals[k] = &v
		}
		res, err := c.UpdateSecrets(ctx, app, vals)
		if err != nil {
			return nil, fmt.Errorf("storing the Heroku config vars as secrets of %s: %w", app, err)
		}
		fmt.Fprintf(out, "Config vars → secrets of %s: %s (secrets version %d)\n", app, strings.Join(slices.Sorted(maps.Keys(p.Secrets)), ", "), res.Version)
	}
	if len(p.Skipped) > 0 {
		fmt.Fprintf(out, "Not deployed (quantity 0 on Heroku): %s\n", strings.Join(p.Skipped, ", "))
	}
	if err := writePlan(p, path); err != nil {
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Fprintf(out, "Wrote %s\n", path)
	return p, nil
}

// launchFromHeroku is perch launch --from-heroku: the app made, synced,
// deployed, and scaled to the formation's quantities.
func launchFromHeroku(cmd *cobra.Command, g *globals, hf herokuFlags, name, org, path string, regions []string, smoke time.Duration) error {
	hc, err := hf.client()
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx, stop := interruptible(cmd)
	defer stop()
	out := cmd.OutOrStdout()
	src, err := readHeroku(ctx, hc, hf.App)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Heroku app %s: release v%d, slug %s, stack %s, region %s, process types %s\n", src.App.Name, src.Release.Version, src.Slug.ID,
		src.Slug.Stack.Name, src.App.Region.Name, strings.Join(slices.Sorted(maps.Keys(src.Slug.ProcessTypes)), ", "))
	regions, err = herokuRegions(ctx, c, src.App.Region.Name, regions)
	if err != nil {
		return err
	}
	a, err := createApp(ctx, c, cmp.Or(name, g.app, src.App.Name), org)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "Created app %s in organisation %s (regions %s)\n", a.Name, a.Org, strings.Join(regions, ", "))
	p, err := syncHeroku(ctx, out, c, hf, src, a.Name, regions, path)
	if err != nil {
		return fmt.Errorf("%w (app %s was created: run the command again with --force, or perch apps destroy %s)", err, a.Name, a.Name)
	}
	if err := runDeploy(cmd, g, path, smoke); err != nil {
		return err
	}
	return scaleToFormation(cmd, g, path, p)
}

// runDeploy runs perch deploy on path, as the user would.
func runDeploy(cmd *cobra.Command, g *globals, path string, smoke time.Duration) error {
	g.configPath = path
	dc := newDeployCmd(g)
	dc.SetContext(cmd.Context())
	dc.SetOut(cmd.OutOrStdout())
	dc.SetErr(cmd.ErrOrStderr())
	if err := dc.Flags().Set("smoke-window", smoke.String()); err != nil {
		return err
	}
	return dc.RunE(dc, nil)
}

// scaleToFormation scales process groups whose quantity is not 1.
func scaleToFormation(cmd *cobra.Command, g *globals, path string, p *heroku.Plan) error {
	var args []string
	for _, grp := range slices.Sorted(maps.Keys(p.Counts)) {
		if n := p.Counts[grp]; n != 1 {
			args = append(args, fmt.Sprintf("%s=%d", grp, n))
		}
	}
	if len(args) == 0 {
		return nil
	}
	g.configPath = path
	sc := newScaleCountCmd(g)
	sc.SetContext(cmd.Context())
	sc.SetOut(cmd.OutOrStdout())
	sc.SetErr(cmd.ErrOrStderr())
	if err := sc.Flags().Set("yes", "true"); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Scaling to Heroku's formation: %s (machines per region)\n", strings.Join(args, " "))
	return sc.RunE(sc, args)
}

// resyncFromHeroku is perch deploy --from-heroku: the Heroku app's newest
// release (slug and config vars) pushed and written to perch.toml, which
// the deploy then rolls out.
func resyncFromHeroku(cmd *cobra.Command, g *globals, hf herokuFlags) error {
	cfg, err := loadProject(g.configPath, cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	happ := cmp.Or(hf.App, cfg.Env[envHerokuApp])
	if happ == "" {
		return fmt.Errorf("%s does not say which Heroku app it came from ([env] %s): pass --from-heroku APP", g.configPath, envHerokuApp)
	}
	app := cmp.Or(g.app, cfg.App)
	hc, err := hf.client()
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	src, err := readHeroku(ctx, hc, happ)
	if err != nil {
		return err
	}
	if v := "v" + strconv.Itoa(src.Release.Version); v == cfg.Env[envHerokuRelease] {
		fmt.Fprintf(out, "Heroku app %s is still at release %s; re-deploying it\n", happ, v)
	} else {
		fmt.Fprintf(out, "Heroku app %s: release v%d (perch.toml had %s)\n", happ, src.Release.Version, cmp.Or(cfg.Env[envHerokuRelease], "none"))
	}
	regions := cfg.DeployRegions()
	_, err = syncHeroku(ctx, out, c, hf, src, app, regions, g.configPath)
	return err
}
