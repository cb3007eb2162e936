package config

import (
	"slices"

	"github.com/perchhq/perch/internal/api"
)

// The options of a public port's handlers, as in fly.toml:
// [services.ports.tls_options], [services.ports.http_options],
// [services.ports.proxy_proto_options], and the first two under
// [http_service].

// handlers are the edge's connection handlers a port may list.
var handlers = []string{"tls", "http", "proxy_proto"}

// tlsVersions are the tls_options.versions the edge serves.
var tlsVersions = []string{"TLSv1.2", "TLSv1.3"}

// portHandlers reads a port's handlers list and checks that the edge can
// serve the chain it makes.
func (d *decoder) portHandlers(s *section) ([]string, bool) {
	list, p, _ := s.strs("handlers", `["tls", "http"]`)
	ok := true
	for i, h := range list {
		switch {
		case h == "pg_tls":
			d.errorf(p.index(i), `handler "pg_tls" is not supported yet; use handlers = ["tls"] to have the edge terminate TLS in front of Postgres, or no handlers to pass TCP through`)
			ok = false
		case !slices.Contains(handlers, h):
			d.errorf(p.index(i), "handler %q is not one of %s (or no handlers at all for raw TCP)", h, quoteList(handlers))
			ok = false
		}
	}
	if slices.Contains(list, "http") && slices.Contains(list, "proxy_proto") {
		d.errorf(p, `handlers "http" and "proxy_proto" do not go together: HTTP requests share connections to the app, a PROXY header names one client. Apps behind "http" get the client's address in the Perch-Client-IP and X-Forwarded-For headers`)
		ok = false
	}
	return list, ok
}

// portOptions reads the option tables of a [[services.ports]] entry.
func (d *decoder) portOptions(s *section, port *api.Port) {
	if sub := s.sub("tls_options"); sub != nil {
		port.TLSOptions = d.tlsOptions(sub)
	}
	if sub := s.sub("http_options"); sub != nil {
		port.HTTPOptions = d.httpOptions(sub)
	}
	if sub := s.sub("proxy_proto_options"); sub != nil {
		port.ProxyProtoOptions = d.proxyProtoOptions(sub)
	}
	if port.ForceHTTPS && !slices.Contains(port.Handlers, "http") {
		d.warnf(s.p.key("force_https"), `force_https ignored: it redirects HTTP requests, and the port has no "http" handler`)
	}
}

// tlsOptions reads tls_options; nil when it sets nothing.
func (d *decoder) tlsOptions(s *section) *api.TLSOptions {
	o := &api.TLSOptions{}
	if list, p, ok := s.strs("alpn", `["h2", "http/1.1"]`); ok {
		for i, a := range list {
			if a == "" || len(a) > 255 {
				d.errorf(p.index(i), "alpn entries must be 1-255 characters long, got %q", a)
			}
		}
		o.ALPN = list
	}
	if list, p, ok := s.strs("versions", `["TLSv1.2", "TLSv1.3"]`); ok {
		for i, v := range list {
			if !slices.Contains(tlsVersions, v) {
				d.errorf(p.index(i), "TLS version %q is not one the edge serves; use %s", v, quoteList(tlsVersions))
			}
		}
		o.Versions = list
	}
	s.ignore("default_self_signed", "the edge always serves a certificate from Perch's certificate store")
	s.done()
	if o.ALPN == nil && o.Versions == nil {
		return nil
	}
	return o
}

// httpOptions reads http_options; nil when it sets nothing.
func (d *decoder) httpOptions(s *section) *api.HTTPOptions {
	o := &api.HTTPOptions{}
	o.H2Backend, _, _ = s.boolean("h2_backend")
	s.ignore("idle_timeout", "the edge's idle timeout is set per host (perch agent), not per app")
	s.ignore("response", "response header rewriting is not supported yet")
	s.ignore("compress", "the edge passes bodies through as the app sends them")
	s.done()
	if !o.H2Backend {
		return nil
	}
	return o
}

// proxyProtoOptions reads proxy_proto_options; nil when it sets nothing.
func (d *decoder) proxyProtoOptions(s *section) *api.ProxyProtoOptions {
	v, _, ok := s.oneOf("version", "v1", "v2")
	s.done()
	if !ok {
		return nil
	}
	return &api.ProxyProtoOptions{Version: v}
}

func cloneTLSOptions(o *api.TLSOptions) *api.TLSOptions {
	if o == nil {
		return nil
	}
	return &api.TLSOptions{ALPN: slices.Clone(o.ALPN), Versions: slices.Clone(o.Versions)}
}

func cloneHTTPOptions(o *api.HTTPOptions) *api.HTTPOptions {
	if o == nil {
		return nil
	}
	c := *o
	return &c
}

func fileTLS(o *api.TLSOptions) *fileTLSOptions {
	if o == nil {
		return nil
	}
	return &fileTLSOptions{ALPN: o.ALPN, Versions: o.Versions}
}

func fileHTTP(o *api.HTTPOptions) *fileHTTPOptions {
	if o == nil {
		return nil
	}
	return &fileHTTPOptions{H2Backend: o.H2Backend}
}
