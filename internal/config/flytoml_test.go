package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
)

// The corpus: real fly.toml files from public repositories, each naming its
// source on its first line (testdata/flytoml). What each must give, per
// Fly's reference (https://fly.io/docs/reference/configuration/) and
// flyctl's reading of old files (internal/appconfig/patches.go):
//   - ports and internal_port may be strings ("80"); check interval and
//     timeout may be milliseconds (10000) and the timeout may exceed the
//     interval;
//   - kill_signal and kill_timeout (seconds or "5s") are the stop_config;
//   - concurrency defaults to type "connections", soft_limit 20, no
//     hard_limit; the old "soft,hard" string is requests;
//   - [[vm]] sizes: shared-cpu-1x (1 CPU, 256 MB) unless set, memory wins
//     over memory_mb;
//   - [experimental] cmd and a [processes] command replace the image's cmd;
//   - the machine's env has FLY_PROCESS_GROUP, and PRIMARY_REGION from
//     primary_region (or the file's own [env]).
// Nothing is refused that Fly takes; every key Perch does not act on is
// named in exactly one warning that says what happens instead.

// summary is what a machine made from a fly.toml gets, in a few short
// lines a reader can check against Fly's reference.
type summary struct {
	Services string // per service: "tcp 4000: 80[http] 443[tls,http]", joined by "; "
	Conc     string // per service: "connections 20/25" (soft/hard, 0 = none)
	Checks   string // per check: "tcp 15s/2s" (interval/timeout, "" = default)
	Stop     string // "SIGINT 5s", "" when the file sets neither
	Guest    string // "shared 1x256 runc"
	Cmd      string // "entrypoint | cmd", "" when the image's own runs
	Env      string // FLY_PROCESS_GROUP and PRIMARY_REGION as the machine gets them
}

type corpusWant struct {
	err     string // the whole error, for a file Fly refuses too
	summary summary
	warns   []string
}

var corpus = map[string]corpusWant{
	"actioncable-tester.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"amardns.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]; tcp 8053: 853[tls]", Conc: "connections 20/0; connections 20/0", Checks: "tcp 15s/4s; http 15s/4s GET /health; tcp 15s/4s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=sin"},
	},
	"bun.toml": {
		summary: summary{Services: "tcp 3000: 80[http] 443[tls,http]", Conc: "requests 100/250", Checks: "tcp /", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"care-guide-task-backend.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "shared 1x1024 runc", Cmd: "", Env: "group=app primary=sin"},
		warns:   []string{"memory_mb = 512 ignored: memory on line 22 (1024 MB) wins, as on Fly; set only one"},
	},
	"cockroachdb.toml": {
		summary: summary{Services: "tcp 26257: 10000[]", Conc: "connections 200/1000", Checks: "tcp 10s/5s", Stop: "SIGINT 5m0s", Guest: "shared 1x256 runc", Cmd: "| shell start_fly.sh", Env: "group=app"},
		warns:   []string{"[checks] ignored: top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation", "\"auto_rollback\" in [experimental] ignored: perch deploy always puts the previous release back when a new machine fails", "[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics"},
	},
	"coredns.toml": {
		summary: summary{Services: "udp 53: 53[]", Conc: "connections 20/0", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"cron-manager.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "", Guest: "shared 1x1024 runc", Cmd: "", Env: "group=app primary=ord"},
	},
	"dns-flyapp.toml": {
		summary: summary{Services: "udp 53: 53[]", Conc: "connections 500/550", Checks: "", Stop: "SIGTERM 2m0s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"docker-daemon.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"fastapi-book-project.toml": {
		summary: summary{Services: "tcp 8000: 80[http] 443[tls,http]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"fly-etcd.toml": {
		summary: summary{Services: "tcp 2379: 10000[]", Conc: "connections 20/0", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"[checks] ignored: top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation", "\"auto_rollback\" in [experimental] ignored: perch deploy always puts the previous release back when a new machine fails", "[[services]] has no protocol; served as \"tcp\", as Fly v1 did (write protocol = \"tcp\" to say so)"},
	},
	"fly-log-shipper.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics"},
	},
	"flygreeting.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 10s/2s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"fusion.toml": {
		err: "fusion.toml line 6: app name \"{APP_NAME}\" is not valid; use lowercase letters, digits and dashes (at most 63), e.g. \"my-app\"",
	},
	"global-rails.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=scl"},
		warns:   []string{"\"builder\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"},
	},
	"go-example.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=lhr"},
		warns:   []string{"\"builder\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile", "\"buildpacks\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"},
	},
	"grpc-service.toml": {
		summary: summary{Services: "tcp 54321: 443[tls]", Conc: "connections 2000/2500", Checks: "tcp 10s/2s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"\"builder\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"},
	},
	"hello_elixir.toml": {
		summary: summary{Services: "tcp 4000: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGTERM 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   nil,
	},
	"keydb.toml": {
		summary: summary{Services: "tcp 6379: 10000[]", Conc: "connections 20/0", Checks: "tcp 10s/2s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"litefs.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 1s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"live_beats.toml": {
		summary: summary{Services: "tcp 4000: 80[http] 443[tls,http]", Conc: "connections 2000/2500", Checks: "tcp 15s/2s", Stop: "SIGTERM 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=iad"},
		warns:   nil,
	},
	"metagram.toml": {
		summary: summary{Services: "tcp 8000: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s; http 10s/2s GET /.well-known/health-check", Stop: "SIGTERM 1m0s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=sjc"},
		warns:   []string{"unknown key \"app_name\", ignored"},
	},
	"nats-cluster.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"natstream.toml": {
		summary: summary{Services: "tcp 3000: 80[http] 443[tls,http]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "shared 1x1024 runc", Cmd: "", Env: "group=app primary=iad"},
		warns:   []string(nil),
	},
	"nginx-cluster.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "requests 30/100", Checks: "http 3s/1s GET /healthz", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"notesclub.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGTERM 5s", Guest: "shared 1x512 runc", Cmd: "", Env: "group=app primary=fra"},
		warns:   nil,
	},
	"oban_example.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 1000/1000", Checks: "", Stop: "SIGTERM", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=yyz"},
		warns:   []string{"\"swap_size_mb\" ignored: machines get no swap; size memory in [[vm]] instead"},
	},
	"ollama-open-webui.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "performance 8x16384 runc", Cmd: "", Env: "group=app primary=ord"},
		warns:   []string{"\"gpu_kind\" in [[vm]] ignored: GPUs are not supported"},
	},
	"openresty-basic.toml": {
		summary: summary{Services: "tcp 80: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 10s/2s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"openstreetmap-calendar.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "http 10s/2s GET /", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics"},
	},
	"piquetdestream-webapp.toml": {
		summary: summary{Services: "tcp 3000: 80[http] 443[tls,http]", Conc: "connections 90/100", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"postgres-flex.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=ord"},
		warns:   []string{"[checks] ignored: top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation", "[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics"},
	},
	"postgres-ha.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "SIGTERM 5m0s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=ord"},
		warns:   []string{"[checks] ignored: top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation", "\"auto_rollback\" in [experimental] ignored: perch deploy always puts the previous release back when a new machine fails", "\"enable_etcd\" in [experimental] ignored: Perch has no etcd for apps", "[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics", "\"encrypted\" in [[mounts]] ignored: Perch does not encrypt volumes at rest; use the host's disk encryption"},
	},
	"postgres-migrator.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"\"auto_rollback\" in [experimental] ignored: perch deploy always puts the previous release back when a new machine fails", "[[services]] ignored: it has no internal_port and no ports, so nothing could reach it (Fly serves nothing for it either)"},
	},
	"rails-machine-workers.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"rails-on-fly.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=atl"},
		warns:   []string{"\"builder\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"},
	},
	"ration-django.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string(nil),
	},
	"redis-geo-cache.toml": {
		summary: summary{Services: "tcp 7379: 10000[]", Conc: "connections 20/25", Checks: "tcp 10s/2s", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"redis.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"[metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics"},
	},
	"roqr.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "| bundle exec rails server", Env: "group=web"},
	},
	"sentrypeer.toml": {
		summary: summary{Services: "udp 5060: 5060[]", Conc: "connections 20/25", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=den"},
		warns:   []string(nil),
	},
	"sgpe-rs.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "shared 1x1024 runc", Cmd: "", Env: "group=app primary=lhr"},
		warns:   []string(nil),
	},
	"tailscale-exit.toml": {
		summary: summary{Services: "", Conc: "", Checks: "", Stop: "SIGTERM", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=eze"},
	},
	"tarkov-prime-bot.toml": {
		summary: summary{Services: "tcp 8080:", Conc: "connections 20/25", Checks: "", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "| npm run prod", Env: "group=app"},
		warns:   []string{"\"builder\" in [build] ignored: perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"},
	},
	"tasklite.toml": {
		summary: summary{Services: "tcp 8081: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGINT 5s", Guest: "shared 1x256 runc", Cmd: "| tasklite-server", Env: "group=app"},
	},
	"tele_churn.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 1000/1000", Checks: "http 30s/5s GET /", Stop: "SIGTERM 5s", Guest: "shared 1x2048 runc", Cmd: "", Env: "group=app primary=ams"},
		warns:   []string(nil),
	},
	"thumbnail_generator.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 1000/1000", Checks: "", Stop: "SIGTERM", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app primary=iad"},
		warns:   []string{"\"swap_size_mb\" ignored: machines get no swap; size memory in [[vm]] instead"},
	},
	"tictac.toml": {
		summary: summary{Services: "tcp 4000: 80[http] 443[tls,http]", Conc: "connections 20/25", Checks: "tcp 15s/2s", Stop: "SIGTERM 5s", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
		warns:   []string{"\"port\" in [[services.tcp_checks]] ignored: a service's checks always go to its internal_port"},
	},
	"vscode-remote.toml": {
		summary: summary{Services: "tcp 22: 10022[]", Conc: "connections 20/0", Checks: "", Stop: "", Guest: "shared 1x256 runc", Cmd: "", Env: "group=app"},
	},
	"wps.toml": {
		summary: summary{Services: "tcp 8080: 80[http] 443[tls,http]", Conc: "connections 1000/1000", Checks: "", Stop: "SIGTERM", Guest: "shared 1x1024 runc", Cmd: "", Env: "group=app primary=iad"},
		warns:   []string(nil),
	},
}

func summarize(mc api.MachineConfig) summary {
	var s summary
	var svcs, conc, checks []string
	for _, sv := range mc.Services {
		var ports []string
		for _, p := range sv.Ports {
			ports = append(ports, fmt.Sprintf("%d[%s]", p.Port, strings.Join(p.Handlers, ",")))
		}
		svcs = append(svcs, strings.TrimSpace(fmt.Sprintf("%s %d: %s", sv.Protocol, sv.InternalPort, strings.Join(ports, " "))))
		c := sv.Concurrency
		conc = append(conc, fmt.Sprintf("%s %d/%d", c.Type, c.SoftLimit, c.HardLimit))
		for _, k := range sv.Checks {
			ck := fmt.Sprintf("%s %s/%s", k.Type, k.Interval, k.Timeout)
			if k.Type == "http" {
				ck += " " + k.Method + " " + k.Path
			}
			checks = append(checks, ck)
		}
	}
	s.Services, s.Conc, s.Checks = strings.Join(svcs, "; "), strings.Join(conc, "; "), strings.Join(checks, "; ")
	if sc := mc.StopConfig; sc != nil {
		s.Stop = strings.TrimSpace(sc.Signal + " " + sc.Timeout)
	}
	g := mc.Guest
	s.Guest = fmt.Sprintf("%s %dx%d %s", g.CPUKind, g.CPUs, g.MemoryMB, g.Runtime)
	if len(mc.Init.Entrypoint)+len(mc.Init.Cmd) > 0 {
		s.Cmd = strings.TrimSpace(strings.Join(mc.Init.Entrypoint, " ") + " | " + strings.Join(mc.Init.Cmd, " "))
	}
	s.Env = "group=" + mc.Env[EnvProcessGroup]
	if r, ok := mc.Env[EnvPrimaryRegion]; ok {
		s.Env += " primary=" + r
	}
	return s
}

// named is what every warning starts with: the key or section it is about.
var named = regexp.MustCompile(`^("[a-z_-]+"( in \[+[a-z_.]+\]+)?|\[+[a-z_.]+\]+|unknown key "[^"]+"|memory_mb|interval [0-9a-z.]+)`)

func TestFlyTomlCorpus(t *testing.T) {
	files, err := filepath.Glob("testdata/flytoml/*.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 30 {
		t.Fatalf("the corpus has %d files, want at least 30", len(files))
	}
	parsed, warned := 0, 0
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			want, ok := corpus[name]
			if !ok {
				t.Fatalf("%s is not in the corpus table: add what Fly gives for it", name)
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(data), "# Source: github.com/") {
				t.Errorf("%s does not name its source on its first line", name)
			}
			c, warns, err := Parse(name, data, LoadOptions{})
			var msgs []string
			for _, w := range warns {
				msgs = append(msgs, w.Msg)
				if !named.MatchString(w.Msg) {
					t.Errorf("warning does not start with the key it is about: %s", w)
				}
			}
			if diff := cmp.Diff(want.warns, msgs, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
			if want.err != "" {
				if err == nil || err.Error() != want.err {
					t.Fatalf("Parse error = %v, want %s", err, want.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse refused a file Fly takes: %v", err)
			}
			parsed++
			if len(warns) > 0 {
				warned++
			}
			mc := c.MachineConfig("img")
			if diff := cmp.Diff(want.summary, summarize(mc)); diff != "" {
				t.Errorf("machine config (-want +got):\n%s", diff)
			}
			// What the API would refuse, it refuses for the whole deploy.
			for i, sv := range mc.Services {
				for j, k := range sv.Checks {
					if err := health.Validate(k); err != nil {
						t.Errorf("service %d check %d would be refused by the API: %v", i, j, err)
					}
				}
			}
		})
	}
	t.Logf("corpus: %d files, %d parsed (%d with warnings), %d refused as Fly refuses them", len(files), parsed, warned, len(files)-parsed)
}
