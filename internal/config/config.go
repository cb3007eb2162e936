// Package config reads and writes perch.toml, the file that says how Perch
// runs an app. Its format is Fly.io's fly.toml, accepted as it is: a fly.toml
// works unchanged, keys Perch does not know are warned about, not fatal, and
// invalid values fail with the file, the line and what to write instead.
// Perch adds one key, regions. The CLI imports this package; it imports only
// api, and health for the rules of health checks.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/perchhq/perch/internal/api"
)

// Config is a parsed perch.toml. Fields left out of the file are zero.
type Config struct {
	App           string
	PrimaryRegion string
	// Regions is Perch's extension: the regions `perch deploy` places
	// machines in. Use DeployRegions, which falls back to PrimaryRegion.
	Regions     []string
	KillSignal  string // e.g. "SIGINT"; "" for the default
	KillTimeout time.Duration
	Build       Build
	Env         map[string]string
	HTTPService *HTTPService
	Services    []Service
	VMs         []VM
	Deploy      Deploy
	Restarts    []Restart
	// Autoscale is [autoscale]; nil when the section is absent.
	Autoscale *api.AutoscaleSettings
	// Processes maps process group names to their command line.
	Processes map[string]string
	// Statics are [[statics]]: image directories the edges serve.
	Statics []api.Static
	// Files are [[files]] (files.go): written into machines before start.
	Files []File
	// Init is [experimental] cmd, entrypoint and exec, which override the
	// image's as on Fly; a [processes] command overrides Cmd.
	Init Init
	// Mounts is [[mounts]] (mounts.go): at most one.
	Mounts []Mount
}

// Init overrides the image's process, as [experimental] in fly.toml.
type Init struct {
	Cmd        []string // the image's CMD
	Entrypoint []string // the image's ENTRYPOINT (and, as in Docker, its CMD)
	Exec       []string // the whole command line: entrypoint and cmd
}

// Build says where the app's image comes from.
type Build struct {
	Image string
	// Dockerfile, Target and Args, when there is no Image: perch deploy
	// builds the Dockerfile ("Dockerfile" if empty) with BuildKit
	// (internal/build).
	Dockerfile string
	Target     string            // build-target (build_target)
	Args       map[string]string // [build.args]
	// Builder and Buildpacks are Fly's Cloud Native Buildpacks settings:
	// read (and warned about) so that perch deploy can name the builder
	// image it would need; Perch does not run buildpacks yet.
	Builder    string
	Buildpacks []string
}

// HTTPService is Fly's shorthand for an HTTP app: public ports 80 (http) and
// 443 (tls, http) forwarded to InternalPort.
type HTTPService struct {
	InternalPort       int
	ForceHTTPS         bool
	AutoStopMachines   string // "off", "stop", "suspend"; "" when unset
	AutoStartMachines  *bool
	MinMachinesRunning int
	// IdleTimeout is Perch's: how long a machine is idle before autostop
	// stops it (0: api.DefaultIdleTimeout).
	IdleTimeout time.Duration
	Processes   []string
	Concurrency *api.Concurrency
	// Checks are [[http_service.checks]], all of type "http".
	Checks []api.Check
	// TLSOptions apply to port 443, HTTPOptions to both ports.
	TLSOptions  *api.TLSOptions
	HTTPOptions *api.HTTPOptions
}

// Service is one [[services]] section: public ports forwarded to an
// internal port.
type Service struct {
	Protocol           string // "tcp" or "udp"
	InternalPort       int
	Processes          []string
	Ports              []api.Port
	Concurrency        *api.Concurrency
	AutoStopMachines   string
	AutoStartMachines  *bool
	MinMachinesRunning int
	IdleTimeout        time.Duration // as in HTTPService
	// Checks are [[services.tcp_checks]] then [[services.http_checks]].
	Checks []api.Check
}

// VM is one [[vm]] section. Fields hold what the file set (zero when unset);
// Guest resolves them with Fly's defaults.
type VM struct {
	Size      string // a preset such as "shared-cpu-1x"
	MemoryMB  int
	CPUs      int
	CPUKind   string // "shared" or "performance"
	Runtime   string // "runc" or "microvm"
	Processes []string
}

// Deploy is the [deploy] section.
type Deploy struct {
	Strategy string // "rolling", "immediate", "canary" or "bluegreen"
	// MaxUnavailable is how many machines a rolling deploy replaces at
	// once: a count (>= 1) or a fraction of a region's machines (< 1);
	// 0 when unset.
	MaxUnavailable float64
	// WaitTimeout bounds how long a deploy waits for each new machine to
	// be ready and smoke-checked; 0 when unset.
	WaitTimeout time.Duration
	// ReleaseCommand is run once per deploy, in a temporary machine of the
	// new release, before any machine is replaced (release_command, split
	// as a shell splits words); ReleaseCommandTimeout bounds it
	// (0 when unset: ReleaseTimeout).
	ReleaseCommand        []string
	ReleaseCommandTimeout time.Duration
	// ReleaseCommandVM is [deploy.release_command_vm] (also
	// release_command_compute): the release command machine's size; nil
	// gives it the app's own (ReleaseGuest).
	ReleaseCommandVM *VM
}

// DefaultReleaseCommandTimeout is Fly's release_command_timeout default.
const DefaultReleaseCommandTimeout = 5 * time.Minute

// Restart is one [[restart]] section.
type Restart struct {
	Policy     string // api.RestartNo, api.RestartAlways or api.RestartOnFailure
	MaxRetries int
	Processes  []string
}

// LoadOptions tunes validation.
type LoadOptions struct {
	// Regions are the valid region codes (e.g. geo.Default().Codes()). When
	// nil, region codes are not checked.
	Regions []string
}

// Warning is a problem that does not stop Perch: an unknown key, or a Fly
// feature Perch ignores.
type Warning struct {
	File string
	Line int
	Msg  string
}

func (w Warning) String() string { return fmt.Sprintf("%s line %d: %s", w.File, w.Line, w.Msg) }

// Error is an invalid value or a syntax error in the file. Parse and Load
// return one *Error, or several joined with errors.Join (one per line),
// sorted by line.
type Error struct {
	File   string
	Line   int
	Column int // 0 when the error is about a whole key or value
	Msg    string
}

func (e *Error) Error() string {
	if e.Column > 0 {
		return fmt.Sprintf("%s line %d, column %d: %s", e.File, e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("%s line %d: %s", e.File, e.Line, e.Msg)
}

// Load reads and checks the config file at path.
func Load(path string, opts LoadOptions) (*Config, []Warning, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data, opts)
}

// Parse reads and checks a config file's contents; name is the file name
// used in messages. Warnings come back even when the error is not nil.
func Parse(name string, data []byte, opts LoadOptions) (*Config, []Warning, error) {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		return nil, nil, syntaxError(name, err)
	}
	lines, err := indexLines(data)
	if err != nil {
		// Unreachable while go-toml's decoder and parser agree on what is
		// valid, but an error must still point into the file.
		return nil, nil, syntaxError(name, err)
	}
	d := &decoder{file: name, lines: lines, opts: opts}
	c := d.config(doc)
	slices.SortStableFunc(d.warns, func(a, b Warning) int { return cmp.Compare(a.Line, b.Line) })
	if len(d.errs) > 0 {
		slices.SortStableFunc(d.errs, func(a, b *Error) int { return cmp.Compare(a.Line, b.Line) })
		errs := make([]error, len(d.errs))
		for i, e := range d.errs {
			errs[i] = e
		}
		if len(errs) == 1 {
			return nil, d.warns, errs[0]
		}
		return nil, d.warns, errors.Join(errs...)
	}
	return c, d.warns, nil
}

func syntaxError(name string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		return &Error{File: name, Line: line, Column: col, Msg: "not valid TOML: " + trimTOMLPrefix(de.Error())}
	}
	// go-toml reports every syntax error as a DecodeError; anything else is
	// still the file's fault, so it still gets a line.
	return &Error{File: name, Line: 1, Msg: "not valid TOML: " + trimTOMLPrefix(err.Error())}
}

func trimTOMLPrefix(s string) string {
	const p = "toml: "
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}

// DeployRegions are the regions `perch deploy` places machines in: Regions,
// else the primary region, else none.
func (c *Config) DeployRegions() []string {
	if len(c.Regions) > 0 {
		return slices.Clone(c.Regions)
	}
	if c.PrimaryRegion != "" {
		return []string{c.PrimaryRegion}
	}
	return nil
}
