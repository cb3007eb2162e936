// Package health runs a machine's health checks, as fly.toml declares them
// ([[services.tcp_checks]], [[services.http_checks]], [[http_service.checks]]):
// a TCP connect or an HTTP request against the machine's private address,
// every interval, with a timeout and a grace period after the machine
// starts. The machine's own host runs them (the agent) and writes the
// results to the machine's status; the edge takes a machine with a critical
// check out of rotation. It imports only api, so the server may use it to
// validate checks too.
package health

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"golang.org/x/net/http/httpguts"
)

// Defaults for what a check leaves out: the values fly.toml files commonly
// carry (interval 15s, timeout 2s, grace period 1s).
const (
	DefaultInterval = 15 * time.Second
	// DefaultTimeout is shortened to the interval when that is shorter.
	DefaultTimeout     = 2 * time.Second
	DefaultGracePeriod = time.Second
	// MinInterval is the shortest interval Validate accepts: a host checks
	// every machine it runs, so checks must stay cheap.
	MinInterval = time.Second
)

// Methods are the HTTP methods an HTTP check may use.
var Methods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// Check is a check ready to run: defaults applied, durations parsed.
type Check struct {
	Name        string
	Type        string // "tcp" or "http"
	Port        int
	Interval    time.Duration
	Timeout     time.Duration
	GracePeriod time.Duration
	// HTTP checks only.
	Method        string
	Path          string
	HTTPS         bool
	TLSSkipVerify bool
	Headers       http.Header

	client *http.Client
}

// Parse checks c and applies the defaults. It accepts any positive
// interval (tests check often); Validate holds users to MinInterval.
func Parse(c api.Check) (*Check, error) {
	k := &Check{Name: c.Name, Type: c.Type, Port: c.Port, Method: strings.ToUpper(c.Method), Path: c.Path, TLSSkipVerify: c.TLSSkipVerify}
	if k.Type != "tcp" && k.Type != "http" {
		return nil, fmt.Errorf("type %q is not \"tcp\" or \"http\"", c.Type)
	}
	if k.Port < 1 || k.Port > 65535 {
		return nil, fmt.Errorf("port must be 1-65535, got %d", c.Port)
	}
	var err error
	if k.Interval, err = duration("interval", c.Interval, DefaultInterval); err != nil {
		return nil, err
	}
	// Left out, the timeout is the default or the interval if that is shorter.
	if k.Timeout, err = duration("timeout", c.Timeout, min(DefaultTimeout, k.Interval)); err != nil {
		return nil, err
	}
	if k.GracePeriod, err = duration("grace_period", c.GracePeriod, DefaultGracePeriod); err != nil {
		return nil, err
	}
	if k.Interval <= 0 || k.Timeout <= 0 {
		return nil, fmt.Errorf("interval and timeout must be more than 0, got %s and %s", k.Interval, k.Timeout)
	}
	// A timeout longer than the interval is accepted, as Fly does: the
	// monitor runs a check's probes one after another, so they never
	// overlap; the next starts an interval after the last one ended.
	if k.Type == "tcp" {
		return k, nil
	}
	if k.Method == "" {
		k.Method = "GET"
	}
	if !slices.Contains(Methods, k.Method) {
		return nil, fmt.Errorf("method %q is not one of %s", c.Method, strings.Join(Methods, ", "))
	}
	if k.Path == "" {
		k.Path = "/"
	}
	if !strings.HasPrefix(k.Path, "/") {
		return nil, fmt.Errorf("path %q must start with /, e.g. \"/health\"", c.Path)
	}
	switch c.Protocol {
	case "", "http":
	case "https":
		k.HTTPS = true
	default:
		return nil, fmt.Errorf("protocol %q is not \"http\" or \"https\"", c.Protocol)
	}
	k.Headers = http.Header{}
	for name, vals := range c.Headers {
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("header name %q is not valid; use letters, digits and dashes, e.g. \"X-Health\"", name)
		}
		for _, v := range vals {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, fmt.Errorf("header %s has a value with a control character (a line break?)", name)
			}
			k.Headers.Add(name, v)
		}
	}
	k.client = newClient(k.TLSSkipVerify)
	return k, nil
}

// Validate says what is wrong with c, for the API to refuse it.
func Validate(c api.Check) error {
	k, err := Parse(c)
	if err != nil {
		return err
	}
	if k.Interval < MinInterval {
		return fmt.Errorf("interval %s is too short; check at most every %s", k.Interval, MinInterval)
	}
	return nil
}

func duration(field, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s %q is not a duration; write e.g. \"15s\"", field, s)
	}
	return d, nil
}

// MachineChecks are the checks of all of a machine's services, each with
// its port (the service's internal port unless it names one) and a name
// (Fly's "servicecheck-NN-type-port" unless it has one).
func MachineChecks(mc api.MachineConfig) []api.Check {
	var out []api.Check
	for _, svc := range mc.Services {
		for _, c := range svc.Checks {
			if c.Port == 0 {
				c.Port = svc.InternalPort
			}
			if c.Name == "" {
				c.Name = DefaultName(len(out), c)
			}
			out = append(out, c)
		}
	}
	return out
}

// DefaultName is the name of the i-th check of a machine that has none.
func DefaultName(i int, c api.Check) string {
	return fmt.Sprintf("servicecheck-%02d-%s-%d", i, c.Type, c.Port)
}
