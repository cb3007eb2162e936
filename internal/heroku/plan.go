package heroku

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/config"
)

// Regions maps Heroku's regions to Perch's nearest: the Common Runtime's
// us (Virginia) and eu (Dublin), and Private Spaces' regions.
var Regions = map[string]string{
	"us": "iad", "virginia": "iad", "eu": "ams", "dublin": "ams",
	"oregon": "sea", "frankfurt": "fra", "tokyo": "nrt", "sydney": "syd",
	"montreal": "yul", "london": "lhr", "mumbai": "bom", "singapore": "sin",
}

// StopTimeout is how long Heroku waits after SIGTERM before SIGKILL.
const StopTimeout = 30 * time.Second

// Source is what was read from Heroku.
type Source struct {
	App        *App
	Release    *Release
	Slug       *Slug
	Formation  []Formation
	ConfigVars map[string]string
}

// CheckSlugApp explains why an app cannot run as a slug: a Fir app (OCI
// images, Cloud Native Buildpacks) or a release without a slug.
func CheckSlugApp(a *App, r *Release) error {
	if a.Generation != nil && a.Generation.Name == "fir" || r != nil && r.OCIImage != nil {
		return fmt.Errorf("heroku app %s is a Fir app: its releases are OCI images, not slugs, and Turboku moves Cedar (slug) apps; deploy its image with perch deploy --image instead (heroku's registry: docs/heroku.md)", a.Name)
	}
	if r != nil && r.Slug == nil {
		return fmt.Errorf("heroku app %s release v%d has no slug: the app was never built (git push heroku main first), or only its config changed before a first build", a.Name, r.Version)
	}
	return nil
}

// Plan is the Perch side of a Heroku app.
type Plan struct {
	Config  *config.Config
	Secrets map[string]string // the config vars
	// Counts are machines per region of each process group, from the
	// formation's quantities (1 is what a deploy places anyway).
	Counts   map[string]int
	Skipped  []string // process types with quantity 0, not deployed
	comments map[string][]string
}

// Quantity is a process type's quantity: the formation's, else Heroku's
// default (web 1, others 0).
func Quantity(fs []Formation, typ string) int {
	for _, f := range fs {
		if f.Type == typ {
			return f.Quantity
		}
	}
	if typ == "web" {
		return 1
	}
	return 0
}

// sizes maps dyno sizes to memory (MB) and CPUs.
var sizes = map[string][2]int{
	"eco": {512, 1}, "basic": {512, 1}, "free": {512, 1}, "hobby": {512, 1},
	"standard-1x": {512, 1}, "standard-2x": {1024, 1},
	"performance-m": {2560, 2}, "performance-l": {14336, 8},
	"private-s": {1024, 1}, "private-m": {2560, 2}, "private-l": {14336, 8},
}

// NewPlan maps the app: process types to process groups (web with an
// http_service on PORT), release to release_command, quantities to counts,
// config vars to secrets, sizes to [[vm]], Heroku's 30 s stop to
// kill_signal/kill_timeout.
func NewPlan(src Source, app, image string, regions []string) *Plan {
	cfg := config.New(app, image, regions)
	p := &Plan{Config: cfg, Secrets: maps.Clone(src.ConfigVars), Counts: map[string]int{}, comments: map[string][]string{}}
	cfg.KillSignal, cfg.KillTimeout = "SIGTERM", StopTimeout
	cfg.Env = map[string]string{"PORT": fmt.Sprint(DefaultPort)}
	cfg.Processes = map[string]string{}
	cfg.HTTPService = nil
	cfg.VMs = nil
	from := fmt.Sprintf("heroku app %s release v%d, slug %s", src.App.Name, src.Release.Version, src.Slug.ID)
	var procLines []string
	for _, t := range slices.Sorted(maps.Keys(src.Slug.ProcessTypes)) {
		cmd := src.Slug.ProcessTypes[t]
		if t == "release" {
			cfg.Deploy.ReleaseCommand = []string{"release"}
			continue
		}
		q := Quantity(src.Formation, t)
		if q == 0 {
			p.Skipped = append(p.Skipped, t)
			procLines = append(procLines, fmt.Sprintf("#   %s = %q  (quantity 0 on Heroku: not deployed; add it here and deploy to run it)", t, t))
			continue
		}
		cfg.Processes[t] = t
		p.Counts[t] = q
		size := "standard-1X"
		for _, f := range src.Formation {
			if f.Type == t && f.Size != "" {
				size = f.Size
			}
		}
		mem := sizes[strings.ToLower(size)]
		if mem[0] == 0 {
			mem = sizes["standard-1x"]
		}
		cfg.VMs = append(cfg.VMs, config.VM{MemoryMB: mem[0], CPUs: mem[1], Processes: []string{t}})
		procLines = append(procLines, fmt.Sprintf("#   %s: %s  (quantity %d, %s)", t, cmd, q, size))
	}
	if _, ok := cfg.Processes["web"]; ok {
		cfg.HTTPService = &config.HTTPService{InternalPort: DefaultPort, Processes: []string{"web"}}
	}
	p.comments["app = "] = []string{
		"# Moved from Heroku by perch launch --from-heroku (Turboku): " + from + ",",
		fmt.Sprintf("# stack %s, Heroku region %s. perch deploy --from-heroku re-syncs a newer release.", src.Slug.Stack.Name, src.App.Region.Name),
	}
	p.comments["primary_region = "] = []string{fmt.Sprintf("# Heroku region %q is nearest %s; more regions from --regions.", src.App.Region.Name, cfg.PrimaryRegion)}
	p.comments["kill_signal = "] = []string{"# As Heroku stops a dyno: SIGTERM, then SIGKILL after 30 s."}
	p.comments["[build]"] = []string{"# The stack's base image + the slug's ./app at /app + the dyno launcher (" + LauncherPath + " TYPE)."}
	p.comments["[env]"] = []string{"# Heroku gives every dyno PORT; web's http_service forwards to it. Config vars are secrets (perch secrets list)."}
	p.comments["[processes]"] = append([]string{"# The slug's process types (its Procfile); each value is the process type the launcher starts;", "# each quantity became machines per region (perch scale count), which deploys keep:"}, procLines...)
	p.comments["[http_service]"] = []string{"# web: Heroku routes HTTP to the web dynos' $PORT."}
	p.comments["[[vm]]"] = []string{"# Dyno sizes (formation) as memory and CPUs."}
	if len(cfg.Deploy.ReleaseCommand) > 0 {
		p.comments["[deploy]"] = []string{"# The release phase: the slug's release process type (" + src.Slug.ProcessTypes["release"] + "), once per deploy."}
	}
	return p
}

// Marshal is the perch.toml, with comments saying where each part came
// from.
func (p *Plan) Marshal() ([]byte, error) {
	data, err := p.Config.Marshal()
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	done := map[string]bool{}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		for prefix, c := range p.comments {
			if !done[prefix] && strings.HasPrefix(trimmed, prefix) {
				done[prefix] = true
				for _, cl := range c {
					out.WriteString(cl + "\n")
				}
			}
		}
		out.WriteString(line)
	}
	return out.Bytes(), nil
}
