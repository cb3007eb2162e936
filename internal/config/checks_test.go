package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
)

func TestChecks(t *testing.T) {
	data := lines(
		"app = 'a'",
		"[http_service]",
		"  internal_port = 8080",
		"  [[http_service.checks]]",
		"    interval = '10s'",
		"    timeout = '1s'",
		"    grace_period = '5s'",
		"    method = 'head'",
		"    path = '/health'",
		"    protocol = 'https'",
		"    tls_skip_verify = true",
		"    headers = { X-Token = 's3cret', Accept = ['text/plain', 'application/json'] }",
		"[[services]]",
		"  protocol = 'tcp'",
		"  internal_port = 5432",
		"  [[services.http_checks]]",
		"    interval = 10000", // Fly v1: milliseconds
		"    timeout = 2000",
		"    restart_limit = 0",
		"  [[services.tcp_checks]]",
		"    grace_period = '30s'",
	)
	c, warns, err := Parse("perch.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(warns) != 0 {
		t.Errorf("warnings: %v", warnings(warns))
	}
	want := []api.Service{
		{
			Protocol: "tcp", InternalPort: 8080, Ports: webPorts, Concurrency: defaultConcurrency,
			Checks: []api.Check{{
				Type: "http", Port: 8080, Interval: "10s", Timeout: "1s", GracePeriod: "5s", Method: "HEAD", Path: "/health",
				Protocol: "https", TLSSkipVerify: true,
				Headers: map[string][]string{"X-Token": {"s3cret"}, "Accept": {"text/plain", "application/json"}},
			}},
		},
		{
			Protocol: "tcp", InternalPort: 5432, Concurrency: defaultConcurrency,
			// tcp_checks first, then http_checks, whatever the file's order.
			Checks: []api.Check{
				{Type: "tcp", Port: 5432, GracePeriod: "30s"},
				{Type: "http", Port: 5432, Interval: "10s", Timeout: "2s"},
			},
		},
	}
	if diff := cmp.Diff(want, c.MachineConfig("img").Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	roundTrip(t, c)
}

func TestCheckErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		check []string
		want  string
	}{
		{"duration", []string{"interval = 'often'"}, `line 5: interval "often" is not a duration; write e.g. interval = "15s"`},
		{"duration type", []string{"timeout = true"}, `line 5: timeout must be a duration, e.g. timeout = "15s", got true`},
		{"negative", []string{"grace_period = -5"}, `line 5: grace_period -5 is out of range`},
		{"zero timeout", []string{"timeout = '0s'"}, `line 5: timeout must be more than 0`},
		{"method", []string{"method = 'FETCH'"}, `line 5: method "FETCH" is not one of "GET", "HEAD", "POST"`},
		{"path", []string{"path = 'health'"}, `line 5: path "health" must start with /, e.g. path = "/health"`},
		{"protocol", []string{"protocol = 'grpc'"}, `line 5: protocol "grpc" is not one of "http" or "https"`},
		{"header value", []string{"headers = { X-Count = 3 }"}, `line 5: header X-Count must be a string, e.g. X-Count = "value", got 3`},
		{"header name", []string{"headers = { 'Bad Name' = 'x' }"}, `line 5: header name "Bad Name" is not valid`},
		{"header list", []string{"headers = { X = ['a', 1] }"}, `line 5: X must be a list of strings`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := lines(append([]string{"[http_service]", "internal_port = 8080", "", "[[http_service.checks]]"}, tc.check...)...)
			_, _, err := Parse("perch.toml", []byte(data), LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), "perch.toml "+tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	_, _, err := Parse("perch.toml", []byte(lines("[[services]]", "protocol = 'tcp'", "internal_port = 1", "tcp_checks = ['x']")), LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "line 4: each entry of tcp_checks must be a table") {
		t.Errorf("a check that is not a table: %v", err)
	}
}

func TestCheckWarnings(t *testing.T) {
	data := lines(
		"[[services]]",
		"  protocol = 'tcp'",
		"  internal_port = 8080",
		"  [[services.tcp_checks]]",
		"    path = '/'", // an HTTP key on a TCP check
		"  [[services.http_checks]]",
		"    tls_server_name = 'app.example'",
		"    intervall = '5s'",
		"  [[services.tcp_checks]]",
		"    interval = 500", // Fly v1 milliseconds, under a second
		"    timeout = '2s'",
	)
	c, warns, err := Parse("perch.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`perch.toml line 5: unknown key "path" in [[services.tcp_checks]], ignored`,
		`perch.toml line 7: "tls_server_name" in [[services.http_checks]] ignored: the check sends no SNI name; set tls_skip_verify = true to check an https port`,
		`perch.toml line 8: unknown key "intervall" in [[services.http_checks]], ignored; did you mean "interval"?`,
		`perch.toml line 10: interval 500ms is shorter than 1s; checked every 1s instead`,
	}
	if diff := cmp.Diff(want, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	// The check runs, every second, with its timeout longer than that, as
	// on Fly; the API accepts it.
	got := c.MachineConfig("img").Services[0].Checks
	wantCheck := api.Check{Type: "tcp", Port: 8080, Interval: "1s", Timeout: "2s"}
	if len(got) != 3 || !cmp.Equal(got[1], wantCheck) {
		t.Fatalf("checks = %+v, want the second to be %+v", got, wantCheck)
	}
	if err := health.Validate(got[1]); err != nil {
		t.Errorf("the API would refuse the check: %v", err)
	}
}
