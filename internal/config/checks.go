package config

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
)

// checks reads the health checks under key of a service: tcp_checks and
// http_checks of [[services]], checks of [http_service]. typ is the check
// type the key implies.
func (d *decoder) checks(s *section, key, typ string) []api.Check {
	var out []api.Check
	for _, cs := range s.subs(key) {
		if c, ok := d.check(cs, typ); ok {
			out = append(out, c)
		}
	}
	return out
}

func (d *decoder) check(s *section, typ string) (api.Check, bool) {
	c := api.Check{Type: typ}
	ok := true
	var interval, timeout time.Duration
	var ip, tp path
	c.Interval, interval, ip = d.checkDuration(s, "interval", &ok)
	c.Timeout, timeout, tp = d.checkDuration(s, "timeout", &ok)
	c.GracePeriod, _, _ = d.checkDuration(s, "grace_period", &ok)
	// flyctl only warns about an interval under a second; so do we, and
	// check every second, the most often a host checks.
	if c.Interval != "" && interval < health.MinInterval {
		d.warnf(ip, "interval %s is shorter than %s; checked every %s instead", interval, health.MinInterval, health.MinInterval)
		c.Interval = health.MinInterval.String()
	}
	if c.Timeout != "" && timeout == 0 {
		d.errorf(tp, "timeout must be more than 0, e.g. timeout = \"2s\"")
		ok = false
	}
	// A timeout longer than the interval is fine, as on Fly: a host runs a
	// check's probes one after another, never two at once.
	// Fly v1 restarted a machine after restart_limit failures; Fly v2
	// ignores it too. A critical check takes the machine out of rotation.
	s.accept("restart_limit")
	// Fly v1 tcp_checks could name a port; checks go to the service's
	// internal_port on Fly v2 and here.
	s.ignore("port", "a service's checks always go to its internal_port")
	if typ == "http" {
		ok = d.httpCheck(s, &c) && ok
	}
	s.done()
	return c, ok
}

func (d *decoder) httpCheck(s *section, c *api.Check) bool {
	ok := true
	if m, p, found := s.str("method"); found {
		c.Method = strings.ToUpper(m)
		if !slices.Contains(health.Methods, c.Method) {
			d.errorf(p, "method %q is not one of %s", m, quoteList(health.Methods))
			ok = false
		}
	}
	if path, p, found := s.str("path"); found {
		if !strings.HasPrefix(path, "/") {
			d.errorf(p, "path %q must start with /, e.g. path = \"/health\"", path)
			ok = false
		}
		c.Path = path
	}
	c.Protocol, _, _ = s.oneOf("protocol", "http", "https")
	c.TLSSkipVerify, _, _ = s.boolean("tls_skip_verify")
	s.ignore("tls_server_name", "the check sends no SNI name; set tls_skip_verify = true to check an https port")
	if hs := s.sub("headers"); hs != nil {
		c.Headers = d.checkHeaders(hs)
		hs.done()
	}
	return ok
}

// checkHeaders reads headers = { Name = "value" }; a list gives a header
// several values.
func (d *decoder) checkHeaders(s *section) map[string][]string {
	if len(s.m) == 0 {
		return nil
	}
	out := make(map[string][]string, len(s.m))
	for _, name := range slices.Sorted(maps.Keys(s.m)) {
		v, p, _ := s.get(name)
		var vals []string
		switch v := v.(type) {
		case string:
			vals = []string{v}
		case []any:
			list, _, ok := s.strs(name, `["a", "b"]`)
			if !ok {
				continue
			}
			vals = list
		default:
			d.errorf(p, "header %s must be a string, e.g. %s = \"value\", got %s", name, name, describe(v))
			continue
		}
		if err := health.Validate(api.Check{Type: "http", Port: 1, Headers: map[string][]string{name: vals}}); err != nil {
			d.errorf(p, "%v", err)
			continue
		}
		out[name] = vals
	}
	return out
}

// checkDuration reads a duration written as Fly writes it, "15s", or as
// Fly v1 wrote it, a number of milliseconds. It returns the text to keep,
// the duration, and where it was.
func (d *decoder) checkDuration(s *section, k string, ok *bool) (string, time.Duration, path) {
	v, p, found := s.get(k)
	if !found {
		return "", 0, p
	}
	var t time.Duration
	switch v := v.(type) {
	case int64:
		if v < 0 || v > int64(24*time.Hour/time.Millisecond) {
			d.errorf(p, "%s %d is out of range; write a duration, e.g. %s = \"15s\"", k, v, k)
			*ok = false
			return "", 0, p
		}
		t = time.Duration(v) * time.Millisecond
		return t.String(), t, p
	case string:
		var err error
		t, err = time.ParseDuration(v)
		if err != nil || t < 0 {
			d.errorf(p, "%s %q is not a duration; write e.g. %s = \"15s\"", k, v, k)
			*ok = false
			return "", 0, p
		}
		return v, t, p
	}
	d.errorf(p, "%s must be a duration, e.g. %s = \"15s\", got %s", k, k, describe(v))
	*ok = false
	return "", 0, p
}

// serviceChecks are a service's checks as a machine runs them: against the
// service's internal port.
func serviceChecks(checks []api.Check, port int) []api.Check {
	var out []api.Check
	for _, c := range checks {
		c.Port = port
		c.Headers = maps.Clone(c.Headers)
		for k, v := range c.Headers {
			c.Headers[k] = slices.Clone(v)
		}
		out = append(out, c)
	}
	return out
}

// fileCheck is the TOML shape of a check.
type fileCheck struct {
	GracePeriod   string              `toml:"grace_period,omitempty"`
	Interval      string              `toml:"interval,omitempty"`
	Timeout       string              `toml:"timeout,omitempty"`
	Method        string              `toml:"method,omitempty"`
	Path          string              `toml:"path,omitempty"`
	Protocol      string              `toml:"protocol,omitempty"`
	TLSSkipVerify bool                `toml:"tls_skip_verify,omitempty"`
	Headers       map[string][]string `toml:"headers,omitempty"`
}

// fileChecks are the checks of type typ.
func fileChecks(checks []api.Check, typ string) []fileCheck {
	var out []fileCheck
	for _, c := range checks {
		if c.Type != typ {
			continue
		}
		out = append(out, fileCheck{
			GracePeriod: c.GracePeriod, Interval: c.Interval, Timeout: c.Timeout,
			Method: c.Method, Path: c.Path, Protocol: c.Protocol, TLSSkipVerify: c.TLSSkipVerify, Headers: c.Headers,
		})
	}
	return out
}
