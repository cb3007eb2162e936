package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// appName is a DNS label, since the app is reached as <app>.<domain>.
var appName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// killSignals are the signals Fly accepts for kill_signal.
var killSignals = []string{"SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP"}

func (d *decoder) config(doc map[string]any) *Config {
	c := &Config{}
	top := d.section(nil, doc)
	if app, p, ok := top.str("app"); ok {
		if !appName.MatchString(app) {
			d.errorf(p, "app name %q is not valid; use lowercase letters, digits and dashes (at most 63), e.g. \"my-app\"", app)
		}
		c.App = app
	}
	if r, p, ok := top.str("primary_region"); ok && r != "" {
		d.region(p, r)
		c.PrimaryRegion = r
	}
	c.Regions = d.regions(top)
	if sig, p, ok := top.str("kill_signal"); ok {
		if up := strings.ToUpper(sig); slices.Contains(killSignals, up) {
			c.KillSignal = up
		} else {
			d.errorf(p, "kill_signal %q is not one of %s", sig, quoteList(killSignals))
		}
	}
	c.KillTimeout = d.seconds(top, "kill_timeout")
	if b := top.sub("build"); b != nil {
		c.Build.Image, _, _ = b.str("image")
		c.Build.Dockerfile, _, _ = b.str("dockerfile")
		c.Build.Target, _, _ = b.str("build-target")
		if t, _, ok := b.str("build_target"); ok && c.Build.Target == "" {
			c.Build.Target = t
		}
		if a := b.sub("args"); a != nil {
			c.Build.Args = d.envTable(a) // ARG values: strings, numbers, booleans
			a.done()
		}
		const why = "perch builds only Dockerfiles yet (docs/builds.md); set image = \"...\" in [build] or add a Dockerfile"
		for _, k := range []string{"builder", "buildpacks", "builtin", "ignorefile", "settings"} {
			b.ignore(k, why)
		}
		c.Build.Builder, _, _ = b.str("builder") // warned about above; perch deploy names it
		c.Build.Buildpacks, _, _ = b.strs("buildpacks", `["gcr.io/paketo-buildpacks/go"]`)
		b.done()
	}
	c.Env = d.env(top)
	if s := top.sub("http_service"); s != nil {
		c.HTTPService = d.httpService(s)
	}
	for _, s := range top.subs("services") {
		if sv, ok := d.service(s); ok {
			c.Services = append(c.Services, sv)
		}
	}
	// Fly reads [[compute]] as another name for [[vm]].
	for _, k := range []string{"vm", "compute"} {
		for _, s := range top.subs(k) {
			c.VMs = append(c.VMs, d.vm(s))
		}
	}
	if s := top.sub("deploy"); s != nil {
		c.Deploy.Strategy, _, _ = s.oneOf("strategy", "rolling", "immediate", "canary", "bluegreen")
		c.Deploy.MaxUnavailable = d.maxUnavailable(s)
		c.Deploy.WaitTimeout = d.seconds(s, "wait_timeout")
		d.releaseCommand(s, &c.Deploy) // release.go
		// Fly reads release_command_compute as another name for it.
		for _, k := range []string{"release_command_vm", "release_command_compute"} {
			if vs := s.sub(k); vs != nil {
				v := d.vm(vs)
				c.Deploy.ReleaseCommandVM = &v
			}
		}
		s.done()
	}
	if s := top.sub("autoscale"); s != nil {
		c.Autoscale = d.autoscale(s) // autoscale.go
	}
	for _, s := range top.subs("restart") {
		c.Restarts = append(c.Restarts, d.restart(s))
	}
	// Old fly.toml files say processes = [] for "no process groups", and
	// flyctl drops any list there.
	if v, ok := top.m["processes"].([]any); ok {
		if len(v) == 0 {
			top.accept("processes")
		} else {
			top.ignore("processes", `flyctl ignores a list of process groups too; write them as a table: [processes] app = "command"`)
		}
	} else {
		c.Processes = d.processes(top.sub("processes"))
	}
	if s := top.sub("experimental"); s != nil {
		c.Init = d.experimental(s)
	}
	d.checkProcessNames(c, doc) // processes.go
	// flyctl reads [mount] as [mounts].
	c.Mounts = d.mounts(top, c.ProcessGroups()) // mounts.go
	c.Statics = d.statics(top)                  // statics.go
	c.Files = d.files(top)                      // files.go
	top.ignore("checks", "top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation")
	top.ignore("metrics", "Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics")
	top.ignore("console_command", "perch has no console command (no fly ssh console)")
	top.ignore("swap_size_mb", "machines get no swap; size memory in [[vm]] instead")
	top.ignore("host_dedication_id", "Perch has no dedicated hosts; machines go to any host of their region")
	top.done()
	if c.Autoscale != nil && c.HTTPService != nil && c.Autoscale.MaxMachines > 0 && c.HTTPService.MinMachinesRunning > c.Autoscale.MaxMachines {
		d.errorf(path{"http_service", "min_machines_running"}, "min_machines_running (%d) is above [autoscale] max_machines (%d): the autoscaler could never keep that many running",
			c.HTTPService.MinMachinesRunning, c.Autoscale.MaxMachines)
	}
	if c.PrimaryRegion != "" && len(c.Regions) > 0 && !slices.Contains(c.Regions, c.PrimaryRegion) {
		d.warnf(path{"primary_region"}, "primary_region %q is not in regions; perch deploy places machines only in %s",
			c.PrimaryRegion, strings.Join(c.Regions, ", "))
	}
	return c
}

func (d *decoder) region(p path, code string) {
	if d.opts.Regions != nil && !slices.Contains(d.opts.Regions, code) {
		valid := slices.Sorted(slices.Values(d.opts.Regions))
		d.errorf(p, "unknown region %q; valid regions: %s", code, strings.Join(valid, ", "))
	}
}

func (d *decoder) regions(top *section) []string {
	list, p, ok := top.strs("regions", `["iad", "ams"]`)
	if !ok {
		return nil
	}
	if len(list) == 0 {
		d.errorf(p, "regions is empty; list where to run, e.g. regions = [\"iad\", \"ams\"], or leave it out to use primary_region")
		return nil
	}
	for i, r := range list {
		if j := slices.Index(list[:i], r); j >= 0 {
			d.errorf(p.index(i), "regions lists %q twice; list each region once", r)
			continue
		}
		d.region(p.index(i), r)
	}
	return list
}

// seconds reads a duration written as whole seconds (kill_timeout = 5) or
// a duration string ("30s"), at most a day.
func (d *decoder) seconds(s *section, k string) time.Duration {
	v, p, ok := s.get(k)
	if !ok {
		return 0
	}
	var t time.Duration
	switch v := v.(type) {
	case int64:
		if v < 0 {
			d.errorf(p, "%s must not be negative, got %d", k, v)
			return 0
		}
		if v > int64(24*time.Hour/time.Second) {
			d.errorf(p, "%s %d is too long; write at most a day, e.g. %s = \"5m\"", k, v, k)
			return 0
		}
		t = time.Duration(v) * time.Second
	case string:
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			v = fmt.Sprintf("%ds", n) // "5" is seconds, as 5 is
		}
		var err error
		if t, err = time.ParseDuration(v); err != nil {
			d.errorf(p, "%s %q is not a duration; write e.g. %s = 5 (seconds) or \"30s\"", k, v, k)
			return 0
		}
	default:
		d.errorf(p, "%s must be seconds or a duration, e.g. %s = 5 or \"30s\", got %s", k, k, describe(v))
		return 0
	}
	if t < 0 {
		d.errorf(p, "%s must not be negative, got %s", k, describe(v))
		return 0
	}
	if t > 24*time.Hour {
		d.errorf(p, "%s %s is too long; write at most a day", k, describe(v))
		return 0
	}
	return t
}

// maxUnavailable is [deploy] max_unavailable: a number of machines (at
// least 1) or a fraction of them (above 0, below 1), as Fly reads it.
func (d *decoder) maxUnavailable(s *section) float64 {
	v, p, ok := s.get("max_unavailable")
	if !ok {
		return 0
	}
	switch v := v.(type) {
	case int64:
		if v >= 1 {
			return float64(v)
		}
	case float64:
		if v > 0 && (v < 1 || v == float64(int64(v))) {
			return v
		}
	}
	d.errorf(p, "max_unavailable must be a number of machines (1 or more) or a fraction of them (e.g. 0.33), got %s", describe(v))
	return 0
}

// env reads [env]. Values may be numbers and booleans too, as their text
// (PORT = 8080); a list of tables ([[env]]) is merged, as flyctl does.
func (d *decoder) env(top *section) map[string]string {
	switch v := top.m["env"].(type) {
	case nil, map[string]any, []any:
	default:
		d.errorf(path{"env"}, "env must be a table, e.g. [env] then PORT = \"8080\" on the next line, got %s", describe(v))
		top.accept("env")
		return nil
	}
	var env map[string]string
	for _, s := range top.subs("env") {
		for k, v := range d.envTable(s) {
			if env == nil {
				env = map[string]string{}
			}
			env[k] = v
		}
	}
	return env
}

func (d *decoder) envTable(s *section) map[string]string {
	if len(s.m) == 0 {
		return nil
	}
	env := make(map[string]string, len(s.m))
	for _, k := range slices.Sorted(maps.Keys(s.m)) {
		v, p, _ := s.get(k)
		if k == "" || strings.ContainsAny(k, "=\x00") {
			d.errorf(p, "env name %q must not be empty or contain \"=\"; use a name like \"LOG_LEVEL\"", k)
			continue
		}
		switch v := v.(type) {
		case string:
			if strings.Contains(v, "\x00") {
				d.errorf(p, "env %s must not contain a NUL character", k)
				continue
			}
			env[k] = v
		case int64:
			env[k] = strconv.FormatInt(v, 10)
		case float64:
			env[k] = strconv.FormatFloat(v, 'g', -1, 64)
		case bool:
			env[k] = strconv.FormatBool(v)
		default:
			d.errorf(p, "env %s must be a string, e.g. %s = \"value\", got %s", k, k, describe(v))
		}
	}
	return env
}

func (d *decoder) restart(s *section) Restart {
	var r Restart
	if policy, p, ok := s.str("policy"); ok {
		switch policy {
		case "always", "on-failure":
			r.Policy = policy
		case "never", "no":
			r.Policy = api.RestartNo
		default:
			d.errorf(p, "restart policy %q is not one of \"always\", \"never\" or \"on-failure\"", policy)
		}
	}
	r.MaxRetries, _, _ = s.count("retries", 0)
	r.Processes, _, _ = s.strs("processes", `["app"]`)
	s.done()
	return r
}

func (d *decoder) processes(s *section) map[string]string {
	if s == nil || len(s.m) == 0 {
		return nil
	}
	out := make(map[string]string, len(s.m))
	for _, name := range slices.Sorted(maps.Keys(s.m)) {
		cmd, p, ok := s.str(name)
		if !ok {
			continue
		}
		if _, err := splitCommand(cmd); err != nil {
			d.errorf(p, "process %s: command %q %v", name, cmd, err)
			continue
		}
		out[name] = cmd
	}
	return out
}

// experimental reads [experimental]: cmd, entrypoint and exec override the
// image's, as on Fly; the rest are Fly v1 switches.
func (d *decoder) experimental(s *section) Init {
	var in Init
	in.Cmd = d.commandLine(s, "cmd")
	in.Entrypoint = d.commandLine(s, "entrypoint")
	in.Exec = d.commandLine(s, "exec")
	// What Perch always does: machines have private networking, and a
	// failed deploy puts the previous release back.
	if v, ok := s.m["private_network"].(bool); ok && v {
		s.accept("private_network")
	} else {
		s.ignore("private_network", "machines always have private networking (<app>.internal)")
	}
	if v, ok := s.m["auto_rollback"].(bool); ok && v {
		s.accept("auto_rollback")
	} else {
		s.ignore("auto_rollback", "perch deploy always puts the previous release back when a new machine fails")
	}
	if v, ok := s.m["allowed_public_ports"].([]any); ok && len(v) == 0 {
		s.accept("allowed_public_ports")
	} else {
		s.ignore("allowed_public_ports", "public ports are the [[services.ports]] of each service")
	}
	s.ignore("enable_consul", "Perch has no Consul; use <app>.internal DNS to find the app's machines")
	s.ignore("enable_etcd", "Perch has no etcd for apps")
	s.ignore("kernel_args", "machines boot Perch's own kernel command line")
	s.ignore("attached", "Perch has no attached volumes")
	s.ignore("lazy_load_images", "images are pulled whole before a machine starts")
	s.done()
	return in
}

// commandLine reads an [experimental] command: a list of words, or one
// string split into words as a [processes] command is.
func (d *decoder) commandLine(s *section, k string) []string {
	v, p, ok := s.get(k)
	if !ok {
		return nil
	}
	if str, isStr := v.(string); isStr {
		words, err := splitCommand(str)
		if err != nil {
			d.errorf(p, "%s %q %v", k, str, err)
			return nil
		}
		return words
	}
	words, _, _ := s.strs(k, `["bin/server", "--port", "8080"]`)
	return words
}
