package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

func TestPortOptions(t *testing.T) {
	data := lines(
		"app = 'grpc'",
		"[http_service]",
		"  internal_port = 8080",
		"  [http_service.http_options]",
		"    h2_backend = true",
		"  [http_service.tls_options]",
		"    alpn = ['h2']",
		"    versions = ['TLSv1.3']",
		"[[services]]",
		"  protocol = 'tcp'",
		"  internal_port = 5432",
		"  [[services.ports]]",
		"    port = 5432",
		"    handlers = ['proxy_proto']",
		"    proxy_proto_options = { version = 'v2' }",
		"  [[services.ports]]",
		"    port = 6432",
		"    handlers = ['tls', 'proxy_proto']",
		"  [[services.ports]]",
		"    port = 7000",
		"    [services.ports.http_options]",
		"      idle_timeout = 60",
	)
	c, warns, err := Parse("perch.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{
		`perch.toml line 22: "idle_timeout" in [services.ports.http_options] ignored: the edge's idle timeout is set per host (perch agent), not per app`,
	}, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	mc := c.MachineConfig("img")
	h2 := &api.HTTPOptions{H2Backend: true}
	want := []api.Service{
		{Protocol: "tcp", InternalPort: 8080, Ports: []api.Port{
			{Port: 80, Handlers: []string{"http"}, HTTPOptions: h2},
			{Port: 443, Handlers: []string{"tls", "http"}, HTTPOptions: h2,
				TLSOptions: &api.TLSOptions{ALPN: []string{"h2"}, Versions: []string{"TLSv1.3"}}},
		}, Concurrency: defaultConcurrency},
		{Protocol: "tcp", InternalPort: 5432, Ports: []api.Port{
			{Port: 5432, Handlers: []string{"proxy_proto"}, ProxyProtoOptions: &api.ProxyProtoOptions{Version: "v2"}},
			{Port: 6432, Handlers: []string{"tls", "proxy_proto"}},
			{Port: 7000},
		}, Concurrency: defaultConcurrency},
	}
	if diff := cmp.Diff(want, mc.Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	roundTrip(t, c)
}

func TestPortOptionErrors(t *testing.T) {
	port := func(body ...string) string {
		return lines(append([]string{"[[services]]", "  protocol = 'tcp'", "  internal_port = 8080", "  [[services.ports]]", "    port = 443"}, body...)...)
	}
	for _, tc := range []struct {
		name, data, want string
	}{
		{"pg_tls", port("    handlers = ['pg_tls']"), `perch.toml line 6: handler "pg_tls" is not supported yet; use handlers = ["tls"]`},
		{"http and proxy_proto", port("    handlers = ['http', 'proxy_proto']"), `perch.toml line 6: handlers "http" and "proxy_proto" do not go together`},
		{"tls version", port("    handlers = ['tls']", "    tls_options = { versions = ['TLSv1.1'] }"), `perch.toml line 7: TLS version "TLSv1.1" is not one the edge serves; use "TLSv1.2" or "TLSv1.3"`},
		{"alpn", port("    handlers = ['tls']", "    tls_options = { alpn = 'h2' }"), `perch.toml line 7: alpn must be a list of strings, e.g. alpn = ["h2", "http/1.1"], got "h2"`},
		{"proxy version", port("    handlers = ['proxy_proto']", "    proxy_proto_options = { version = 2 }"), `perch.toml line 7: version must be a string in quotes, got 2`},
		{"h2_backend", port("    handlers = ['http']", "    http_options = { h2_backend = 'yes' }"), `perch.toml line 7: h2_backend must be true or false, got "yes"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Parse("perch.toml", []byte(tc.data), LoadOptions{})
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %v, want it to start with %q", err, tc.want)
			}
		})
	}
	_, warns, err := Parse("perch.toml", []byte(port("    force_https = true")), LoadOptions{})
	if err != nil || len(warns) != 1 || !strings.Contains(warns[0].Msg, `force_https ignored`) {
		t.Errorf("force_https on a raw TCP port: %v, %v; want a warning", warnings(warns), err)
	}
}
