package heroku_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/config"
	"github.com/perchhq/perch/internal/heroku"
)

// The plan maps process types to groups (web with an http_service on
// PORT, release to release_command, quantity 0 left out), quantities to
// counts, sizes to [[vm]], config vars to secrets; its perch.toml parses
// back to the same and says where each part came from.
func TestPlan(t *testing.T) {
	src := heroku.Source{
		App:     &heroku.App{Name: "shop"},
		Release: &heroku.Release{Version: 7},
		Slug:    &heroku.Slug{ID: "s1", ProcessTypes: map[string]string{"web": "gunicorn app:app", "worker": "rq worker", "clock": "python clock.py", "release": "flask db upgrade"}},
		Formation: []heroku.Formation{
			{Type: "web", Quantity: 3, Size: "Standard-2X"}, {Type: "worker", Quantity: 1}, {Type: "clock", Quantity: 0},
		},
		ConfigVars: map[string]string{"SECRET_KEY": "s"},
	}
	src.App.Region.Name = "eu"
	src.Slug.Stack.Name = "heroku-24"
	p := heroku.NewPlan(src, "shop", "reg/shop:v7", []string{"ams", "iad"})
	data, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Parse("perch.toml", data, config.LoadOptions{})
	if err != nil {
		t.Fatalf("the written perch.toml does not parse: %v\n%s", err, data)
	}
	if got := cfg.ProcessGroups(); !slices.Equal(got, []string{"web", "worker"}) {
		t.Errorf("groups = %v; want web, worker (clock has quantity 0)", got)
	}
	if cfg.HTTPService == nil || cfg.HTTPService.InternalPort != heroku.DefaultPort || !slices.Equal(cfg.HTTPService.Processes, []string{"web"}) {
		t.Errorf("http_service = %+v; want web on %d", cfg.HTTPService, heroku.DefaultPort)
	}
	if !slices.Equal(cfg.Deploy.ReleaseCommand, []string{"release"}) || cfg.KillSignal != "SIGTERM" || cfg.KillTimeout != 30*time.Second {
		t.Errorf("release %v kill %s %s", cfg.Deploy.ReleaseCommand, cfg.KillSignal, cfg.KillTimeout)
	}
	if cfg.PrimaryRegion != "ams" || cfg.Env["PORT"] != "5000" || cfg.Build.Image != "reg/shop:v7" {
		t.Errorf("primary %s env %v image %s", cfg.PrimaryRegion, cfg.Env, cfg.Build.Image)
	}
	if g := cfg.MachineConfigFor("web", ""); g.Guest.MemoryMB != 1024 || !slices.Equal(g.Init.Cmd, []string{"web"}) {
		t.Errorf("web machine: memory %d cmd %v; want 1024 (standard-2X), cmd web", g.Guest.MemoryMB, g.Init.Cmd)
	}
	if p.Counts["web"] != 3 || p.Counts["worker"] != 1 || !slices.Equal(p.Skipped, []string{"clock"}) || p.Secrets["SECRET_KEY"] != "s" {
		t.Errorf("counts %v skipped %v secrets %v", p.Counts, p.Skipped, p.Secrets)
	}
	for _, want := range []string{"heroku app shop release v7, slug s1", "Heroku region \"eu\" is nearest ams", "web: gunicorn app:app  (quantity 3, Standard-2X)", "clock = \"clock\"  (quantity 0", "release phase: the slug's release process type (flask db upgrade)", "SIGKILL after 30 s"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("perch.toml lacks the comment %q:\n%s", want, data)
		}
	}
}
