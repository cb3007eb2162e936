package config

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// groupWant is what a machine of one process group gets.
type groupWant struct {
	cmd      string // the command, words joined
	services string // summary's Services
	guest    string // summary's Guest
	statics  []api.Static
}

// Real fly.toml files (the corpus) with several process groups or
// [[statics]]: each group's machines get their own command, size,
// services and statics, and nothing about these keys is warned about.
func TestCorpusProcessGroupsAndStatics(t *testing.T) {
	public := []api.Static{{GuestPath: "/app/public", URLPrefix: "/"}}
	for file, want := range map[string]map[string]groupWant{
		"roqr.toml": {
			"web":    {cmd: "bundle exec rails server", services: "tcp 8080: 80[http] 443[tls,http]", guest: "shared 1x256 runc", statics: public},
			"worker": {cmd: "rake jobs:work", services: "", guest: "shared 1x256 runc"},
		},
		"ration-django.toml": {
			"app": {services: "tcp 8080: 80[http] 443[tls,http]", guest: "shared 1x256 runc", statics: []api.Static{{GuestPath: "/app/static", URLPrefix: "/static"}}},
		},
		"rails-machine-workers.toml":  {"app": {services: "tcp 8080: 80[http] 443[tls,http]", guest: "shared 1x256 runc", statics: public}},
		"actioncable-tester.toml":     {"app": {services: "tcp 8080: 80[http] 443[tls,http]", guest: "shared 1x256 runc", statics: public}},
		"openstreetmap-calendar.toml": {"app": {services: "tcp 8080: 80[http] 443[tls,http]", guest: "shared 1x256 runc", statics: []api.Static{{GuestPath: "/app/static/", URLPrefix: "/static/"}}}},
	} {
		t.Run(file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("testdata/flytoml", file))
			if err != nil {
				t.Fatal(err)
			}
			c, warns, err := Parse(file, data, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range warns {
				if strings.Contains(w.Msg, "processes") || strings.Contains(w.Msg, "statics") {
					t.Errorf("warned about a key Perch now acts on: %s", w)
				}
			}
			if got, wantGroups := c.ProcessGroups(), slices.Sorted(maps.Keys(want)); !slices.Equal(got, wantGroups) {
				t.Fatalf("ProcessGroups = %v, want %v", got, wantGroups)
			}
			for group, mc := range c.MachineConfigs("img") {
				w := want[group]
				s := summarize(mc)
				if got := strings.Join(mc.Init.Cmd, " "); got != w.cmd {
					t.Errorf("%s: cmd %q, want %q", group, got, w.cmd)
				}
				if s.Services != w.services || s.Guest != w.guest {
					t.Errorf("%s: services %q guest %q, want %q %q", group, s.Services, s.Guest, w.services, w.guest)
				}
				if mc.Env[EnvProcessGroup] != group || mc.Metadata[MetaProcessGroup] != group {
					t.Errorf("%s: env %s=%q, metadata %s=%q", group, EnvProcessGroup, mc.Env[EnvProcessGroup], MetaProcessGroup, mc.Metadata[MetaProcessGroup])
				}
				if diff := cmp.Diff(w.statics, mc.Statics); diff != "" {
					t.Errorf("%s: statics (-want +got):\n%s", group, diff)
				}
			}
		})
	}
}

// A group's [[vm]] size is its own (rails.fly.toml: app 1 GB, worker
// shared-cpu-2x), and so is its command.
func TestProcessGroupSizes(t *testing.T) {
	c := load(t, "rails.fly.toml")
	mcs := c.MachineConfigs("img")
	if g := mcs["app"].Guest; g.MemoryMB != 1024 || g.CPUs != 1 {
		t.Errorf("app guest = %+v, want 1 CPU 1024 MB", g)
	}
	if g := mcs["worker"].Guest; g.MemoryMB != 512 || g.CPUs != 2 {
		t.Errorf("worker guest = %+v, want shared-cpu-2x (2 CPUs, 512 MB)", g)
	}
	if got := mcs["worker"].Init.Cmd; !slices.Equal(got, []string{"bundle", "exec", "sidekiq"}) {
		t.Errorf("worker cmd = %q", got)
	}
	if len(mcs["worker"].Services) != 0 || len(mcs["worker"].Statics) != 0 {
		t.Errorf("worker has services %v statics %v; only app's http_service names it", mcs["worker"].Services, mcs["worker"].Statics)
	}
}

func TestProcessesAndStaticsErrors(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"service names an undefined group",
			lines("[processes]", "web = 'a'", "[http_service]", "internal_port = 8080", "processes = ['wbe']"),
			`perch.toml line 5: processes names "wbe", which [processes] does not define; the app's groups are web`},
		{"vm names a group without [processes]",
			lines("[[vm]]", "size = 'shared-cpu-2x'", "processes = ['worker']"),
			`perch.toml line 3: processes names "worker", which [processes] does not define; the app's groups are app`},
		{"group name",
			lines("[processes]", "Web = 'a'"),
			`perch.toml line 2: process group name "Web" is not valid; use lowercase letters, digits, "-" and "_", e.g. worker`},
		{"tigris bucket",
			lines("[[statics]]", "guest_path = '/app/public'", "url_prefix = '/'", "tigris_bucket = 'assets'"),
			`perch.toml line 4: [[statics]] tigris_bucket "assets": statics from a bucket are not supported, Perch serves statics from the app's image; copy the files into the image and set guest_path instead`},
		{"guest path outside the image",
			lines("[[statics]]", "guest_path = '/app/../../etc'", "url_prefix = '/static'"),
			`perch.toml line 2: [[statics]] guest_path "/app/../../etc" must be an absolute directory inside the image, without "..", e.g. "/app/public"`},
		{"relative guest path",
			lines("[[statics]]", "guest_path = 'public'", "url_prefix = '/static'"),
			`perch.toml line 2: [[statics]] guest_path "public" must be an absolute directory inside the image, without "..", e.g. "/app/public"`},
		{"url prefix",
			lines("[[statics]]", "guest_path = '/app/public'", "url_prefix = 'static'"),
			`perch.toml line 3: [[statics]] url_prefix "static" must be a URL path starting with "/", without "..", "?" or "#", e.g. "/static"`},
		{"missing url prefix",
			lines("[[statics]]", "guest_path = '/app/public'"),
			`perch.toml line 1: [[statics]] needs guest_path and url_prefix, e.g. guest_path = "/app/public" and url_prefix = "/static"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse("perch.toml", []byte(tc.data), LoadOptions{})
			if err == nil || err.Error() != tc.want {
				t.Errorf("err = %v\nwant   %s", err, tc.want)
			}
		})
	}
}
