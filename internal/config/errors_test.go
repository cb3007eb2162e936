package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// lines joins lines into a file, so that a test can count them.
func lines(ls ...string) string { return strings.Join(ls, "\n") + "\n" }

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{
			name: "internal_port zero",
			data: lines(
				"# fly.toml app configuration file",
				"",
				"app = 'hello'",
				"primary_region = 'iad'",
				"",
				"[build]",
				"  image = 'hello:latest'",
				"",
				"[http_service]",
				"  force_https = true",
				"  # the port the app listens on",
				"  internal_port = 0",
			),
			want: "perch.toml line 12: internal_port must be 1-65535, got 0",
		},
		{
			name: "internal_port not a number",
			data: lines("[http_service]", `internal_port = "eighty"`),
			want: `perch.toml line 2: internal_port must be a whole number, got "eighty"`,
		},
		{
			name: "internal_port missing",
			data: lines("app = 'a'", "", "[http_service]", "force_https = true"),
			want: "perch.toml line 3: [http_service] needs internal_port, the port your app listens on, e.g. internal_port = 8080",
		},
		{
			name: "internal_port missing from an implicit table",
			data: lines("app = 'a'", "", "[http_service.concurrency]", "hard_limit = 5"),
			want: "perch.toml line 3: [http_service] needs internal_port, the port your app listens on, e.g. internal_port = 8080",
		},
		{
			name: "internal_port dotted at top level",
			data: lines("app = 'a'", "http_service.internal_port = 70000"),
			want: "perch.toml line 2: internal_port must be 1-65535, got 70000",
		},
		{
			name: "memory not a size",
			data: lines("[[vm]]", "cpus = 1", "memory = 'lots'"),
			want: `perch.toml line 3: memory "lots" is not a size; write e.g. "512mb" or "1gb"`,
		},
		{
			name: "memory zero",
			data: lines("[[vm]]", "memory = 0"),
			want: `perch.toml line 2: memory must be more than 0 MB, got 0; write e.g. "512mb" or "1gb"`,
		},
		{
			name: "unknown vm size",
			data: lines("[[vm]]", "  size = 'shared-cpu-3x'"),
			want: `perch.toml line 2: vm size "shared-cpu-3x" is not a size; valid sizes: shared-cpu-1x, shared-cpu-2x, shared-cpu-4x, shared-cpu-8x, performance-1x, performance-2x, performance-4x, performance-8x`,
		},
		{
			name: "cpus zero",
			data: lines("[[vm]]", "cpus = 0"),
			want: "perch.toml line 2: cpus must be at least 1, got 0",
		},
		{
			name: "cpu_kind",
			data: lines("[[vm]]", "cpu_kind = 'dedicated'"),
			want: `perch.toml line 2: cpu_kind "dedicated" is not one of "shared" or "performance"`,
		},
		{
			name: "runtime",
			data: lines("[[vm]]", "runtime = 'docker'"),
			want: `perch.toml line 2: runtime "docker" is not one of "runc" or "microvm"`,
		},
		{
			name: "vm not a table",
			data: lines("app = 'a'", "vm = 'big'"),
			want: `perch.toml line 2: vm must be a list of tables, e.g. [[vm]], got "big"`,
		},
		{
			name: "bad handler",
			data: lines(
				"[[services]]",
				"  protocol = 'tcp'",
				"  internal_port = 8080",
				"  [[services.ports]]",
				"    port = 443",
				"    handlers = [",
				"      'tls',",
				"      'https',",
				"    ]",
			),
			want: `perch.toml line 8: handler "https" is not one of "tls", "http" or "proxy_proto" (or no handlers at all for raw TCP)`,
		},
		{
			name: "bad protocol",
			data: lines("[[services]]", "protocol = 'sctp'", "internal_port = 8080"),
			want: `perch.toml line 2: protocol "sctp" is not one of "tcp" or "udp"`,
		},
		{
			name: "port missing",
			data: lines("[[services]]", "protocol = 'tcp'", "internal_port = 8080", "[[services.ports]]", "handlers = ['http']"),
			want: "perch.toml line 4: [[services.ports]] needs a port, e.g. port = 443",
		},
		{
			name: "port out of range in an inline table",
			data: lines("[[services]]", "protocol = 'tcp'", "internal_port = 8080", "ports = [", "  { port = 80 },", "  { port = 65536 },", "]"),
			want: "perch.toml line 6: port must be 1-65535, got 65536",
		},
		{
			name: "port used twice",
			data: lines(
				"[http_service]",
				"internal_port = 8080",
				"",
				"[[services]]",
				"protocol = 'tcp'",
				"internal_port = 9000",
				"[[services.ports]]",
				"port = 443",
			),
			want: "perch.toml line 8: port 443 is already used by [http_service] on line 1; use each public port once",
		},
		{
			name: "port used twice by services",
			data: lines(
				"[[services]]",
				"protocol = 'tcp'",
				"internal_port = 9000",
				"ports = [{ port = 5000 }]",
				"[[services]]",
				"protocol = 'tcp'",
				"internal_port = 9001",
				"ports = [{ port = 5000 }]",
			),
			want: "perch.toml line 8: port 5000 is already used on line 4; use each public port once",
		},
		{
			name: "force_https not a bool",
			data: lines("[http_service]", "internal_port = 8080", "force_https = 'yes'"),
			want: `perch.toml line 3: force_https must be true or false, got "yes"`,
		},
		{
			name: "negative min_machines_running",
			data: lines("[http_service]", "internal_port = 8080", "auto_stop_machines = 'stop'", "min_machines_running = -1"),
			want: "perch.toml line 4: min_machines_running must be at least 0, got -1",
		},
		{
			name: "negative idle_timeout",
			data: lines("[[services]]", "protocol = 'tcp'", "internal_port = 8080", "auto_stop_machines = 'stop'", "idle_timeout = '-30s'"),
			want: `perch.toml line 5: idle_timeout must not be negative, got "-30s"`,
		},
		{
			name: "idle_timeout not a duration",
			data: lines("[http_service]", "internal_port = 8080", "auto_stop_machines = 'stop'", "idle_timeout = 'soon'"),
			want: `perch.toml line 4: idle_timeout "soon" is not a duration; write e.g. idle_timeout = 5 (seconds) or "30s"`,
		},
		{
			name: "auto_stop_machines",
			data: lines("[http_service]", "internal_port = 8080", "auto_stop_machines = 'sometimes'"),
			want: `perch.toml line 3: auto_stop_machines "sometimes" is not one of "off", "stop", "suspend", true or false`,
		},
		{
			name: "concurrency type",
			data: lines("[http_service]", "internal_port = 8080", "[http_service.concurrency]", "type = 'bytes'"),
			want: `perch.toml line 4: type "bytes" is not one of "connections" or "requests"`,
		},
		{
			name: "concurrency hard below soft",
			data: lines("[http_service]", "internal_port = 8080", "concurrency = { soft_limit = 30, hard_limit = 25 }"),
			want: "perch.toml line 3: hard_limit 25 is less than soft_limit 30; make hard_limit at least soft_limit",
		},
		{
			name: "unknown primary region",
			data: lines("app = 'a'", "primary_region = 'xyz'"),
			want: `perch.toml line 2: unknown region "xyz"; valid regions: ams, cdg, iad, lhr, sin`,
		},
		{
			name: "unknown region in regions",
			data: lines("app = 'a'", "regions = [", "  'iad',", "  'mars',", "]"),
			want: `perch.toml line 4: unknown region "mars"; valid regions: ams, cdg, iad, lhr, sin`,
		},
		{
			name: "region twice",
			data: lines("regions = ['iad', 'ams', 'iad']"),
			want: `perch.toml line 1: regions lists "iad" twice; list each region once`,
		},
		{
			name: "regions empty",
			data: lines("app = 'a'", "regions = []"),
			want: `perch.toml line 2: regions is empty; list where to run, e.g. regions = ["iad", "ams"], or leave it out to use primary_region`,
		},
		{
			name: "regions not strings",
			data: lines("regions = ['iad', 3]"),
			want: `perch.toml line 1: regions must be a list of strings, e.g. regions = ["iad", "ams"], got 3 in it`,
		},
		{
			name: "app name",
			data: lines("app = 'My App'"),
			want: `perch.toml line 1: app name "My App" is not valid; use lowercase letters, digits and dashes (at most 63), e.g. "my-app"`,
		},
		{
			name: "kill_signal",
			data: lines("app = 'a'", "kill_signal = 'SIGWINCH'"),
			want: `perch.toml line 2: kill_signal "SIGWINCH" is not one of "SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL" or "SIGSTOP"`,
		},
		{
			name: "kill_timeout string",
			data: lines("kill_timeout = 'soon'"),
			want: `perch.toml line 1: kill_timeout "soon" is not a duration; write e.g. kill_timeout = 5 (seconds) or "30s"`,
		},
		{
			name: "kill_timeout negative",
			data: lines("kill_timeout = -5"),
			want: `perch.toml line 1: kill_timeout must not be negative, got -5`,
		},
		{
			name: "env table",
			data: lines("[env]", "  LOG_LEVEL = 'info'", "  [env.NESTED]", "  A = 1"),
			want: `perch.toml line 3: env NESTED must be a string, e.g. NESTED = "value", got a table`,
		},
		{
			name: "restart policy",
			data: lines("[[restart]]", "policy = 'sometimes'"),
			want: `perch.toml line 2: restart policy "sometimes" is not one of "always", "never" or "on-failure"`,
		},
		{
			name: "process command unbalanced quote",
			data: lines("[processes]", `app = "bin/server --name 'x"`),
			want: `perch.toml line 2: process app: command "bin/server --name 'x" has a ' with no closing '`,
		},
		{
			name: "process command empty",
			data: lines("[processes]", `app = "  "`),
			want: `perch.toml line 2: process app: command "  " is empty; write the command line, e.g. "bin/server --port 8080"`,
		},
		{
			name: "http_service not a table",
			data: lines("app = 'a'", "http_service = 8080"),
			want: `perch.toml line 2: http_service must be a table, e.g. [http_service], got 8080`,
		},
		{
			name: "date where a string goes",
			data: lines("app = 2024-05-14"),
			want: `perch.toml line 1: app must be a string in quotes, got a date or time`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := Parse("perch.toml", []byte(tc.data), regions)
			if err == nil {
				t.Fatalf("Parse succeeded with %+v, want error %q", c, tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("Parse error\n got %s\nwant %s", err, tc.want)
			}
			var perr *Error
			if !errors.As(err, &perr) || perr.File != "perch.toml" || perr.Line < 1 {
				t.Errorf("error %#v is not an *Error with file and line", err)
			}
		})
	}
}

func TestSyntaxErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"missing equals", lines("app = 'a'", "", "[http_service]", "internal_port 8080"), "perch.toml line 4, column 15: not valid TOML: expected '=' after key"},
		{"unclosed string", lines("app = 'a", "primary_region = 'iad'"), "perch.toml line 1, column 9: not valid TOML: literal strings cannot have new lines"},
		{"duplicate key", lines("app = 'a'", "[env]", "A = '1'", "A = '2'"), "perch.toml line 4, column 1: not valid TOML: key A is already defined"},
		{"unclosed table", lines("app = 'a'", "[[vm]", "cpus = 1"), "perch.toml line 2, column 5: not valid TOML: expected ']]' to close array table name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse("perch.toml", []byte(tc.data), LoadOptions{})
			if err == nil || err.Error() != tc.want {
				t.Errorf("Parse error\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// Every bad value is reported, in file order, so one run shows all fixes.
func TestParseReportsAllErrorsByLine(t *testing.T) {
	data := lines(
		"app = 'a'",
		"[[vm]]",
		"memory = 'lots'",
		"[http_service]",
		"internal_port = 0",
		"[[services]]",
		"protocol = 'icmp'",
		"internal_port = 80",
	)
	_, _, err := Parse("fly.toml", []byte(data), LoadOptions{})
	want := lines(
		`fly.toml line 3: memory "lots" is not a size; write e.g. "512mb" or "1gb"`,
		`fly.toml line 5: internal_port must be 1-65535, got 0`,
		`fly.toml line 7: protocol "icmp" is not one of "tcp" or "udp"`,
	)
	if err == nil || err.Error()+"\n" != want {
		t.Errorf("Parse error\n got %v\nwant %s", err, want)
	}
}

func TestUnknownKeysWarn(t *testing.T) {
	data := lines(
		"app = 'hello'",                // 1
		"colour = 'blue'",              // 2
		"",                             // 3
		"[http_service]",               // 4
		"  internal_port = 8080",       // 5
		"  force_https = true",         // 6
		"  foo = 1",                    // 7
		"  auto_stop_machine = true",   // 8
		"  [http_service.concurrency]", // 9
		"    soft = 3",                 // 10
		"",                             // 11
		"[[services]]",                 // 12
		"  protocol = 'tcp'",           // 13
		"  internal_port = 9000",       // 14
		"  ports = [{ port = 9000, handler = ['tls'] }]", // 15
		"",             // 16
		"[[vm]]",       // 17
		"  gpus = 1",   // 18
		"[tls]",        // 19
		"  cert = 'x'", // 20
	)
	c, warns, err := Parse("perch.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`perch.toml line 2: unknown key "colour", ignored`,
		`perch.toml line 7: unknown key "foo" in [http_service], ignored`,
		`perch.toml line 8: unknown key "auto_stop_machine" in [http_service], ignored; did you mean "auto_stop_machines"?`,
		`perch.toml line 10: unknown key "soft" in [http_service.concurrency], ignored`,
		`perch.toml line 15: unknown key "handler" in [[services.ports]], ignored; did you mean "handlers"?`,
		`perch.toml line 18: "gpus" in [[vm]] ignored: GPUs are not supported`,
		`perch.toml line 19: unknown key "tls", ignored`,
	}
	if diff := cmp.Diff(want, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	// What was known is still read.
	if c.HTTPService.InternalPort != 8080 || !c.HTTPService.ForceHTTPS || c.Services[0].Ports[0].Port != 9000 {
		t.Errorf("known keys beside unknown ones were not read: %+v", c)
	}
}

// Every Fly key Perch does not act on is named in one warning that says what
// happens instead; none is refused and none is dropped without a word.
func TestFlyKeysPerchDoesNotRunAreNamed(t *testing.T) {
	data := lines(
		"app = 'a'",                         // 1
		"swap_size_mb = 512",                // 2
		"console_command = '/bin/sh'",       // 3
		"[experimental]",                    // 4
		"  cmd = ['x']",                     // 5
		"  enable_consul = true",            // 6
		"[metrics]",                         // 7
		"  port = 9091",                     // 8
		"[checks]",                          // 9
		"  [checks.alive]",                  // 10
		"    type = 'tcp'",                  // 11
		"[http_service]",                    // 12
		"  internal_port = 8080",            // 13
		"  [[http_service.machine_checks]]", // 14
		"    image = 'curlimages/curl'",     // 15
		"[[services]]",                      // 16
		"  protocol = 'udp'",                // 17
		"  internal_port = 5353",            // 18
		"  [[services.ports]]",              // 19
		"    port = 53",                     // 20
		"  [[services.tcp_checks]]",         // 21
		"    port = 5353",                   // 22
		"[[vm]]",                            // 23
		"  kernel_args = 'quiet'",           // 24
		"[mount]",                           // 25
		"  source = 'data'",                 // 26
		"  destination = '/data'",           // 27
		"  auto_extend_size_threshold = 80", // 28
	)
	_, warns, err := Parse("fly.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`fly.toml line 2: "swap_size_mb" ignored: machines get no swap; size memory in [[vm]] instead`,
		`fly.toml line 3: "console_command" ignored: perch has no console command (no fly ssh console)`,
		`fly.toml line 6: "enable_consul" in [experimental] ignored: Perch has no Consul; use <app>.internal DNS to find the app's machines`,
		`fly.toml line 7: [metrics] ignored: Perch does not scrape app metrics; the edge's own metrics are on each host's /metrics`,
		`fly.toml line 9: [checks] ignored: top-level machine checks are not run yet; checks under [http_service] or [[services]] are, and only they take a machine out of rotation`,
		`fly.toml line 14: [[http_service.machine_checks]] ignored: perch deploy runs no test machines; the new machines' own checks and the smoke window decide instead`,
		`fly.toml line 22: "port" in [[services.tcp_checks]] ignored: a service's checks always go to its internal_port`,
		`fly.toml line 24: "kernel_args" in [[vm]] ignored: machines boot Perch's own kernel command line`,
		`fly.toml line 28: "auto_extend_size_threshold" in [mount] ignored: volumes are not extended automatically yet; extend with perch volumes extend`,
	}
	if diff := cmp.Diff(want, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

func TestRegionsNotCheckedWithoutList(t *testing.T) {
	c, _, err := Parse("perch.toml", []byte("primary_region = 'home'\nregions = ['home', 'lab']\n"), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"home", "lab"}, c.Regions, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("regions (-want +got):\n%s", diff)
	}
}

func TestPrimaryRegionOutsideRegionsWarns(t *testing.T) {
	_, warns, err := Parse("perch.toml", []byte("primary_region = 'lhr'\nregions = ['iad', 'ams']\n"), regions)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`perch.toml line 1: primary_region "lhr" is not in regions; perch deploy places machines only in iad, ams`}
	if diff := cmp.Diff(want, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}
