package config

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// The environment and metadata flyctl gives a machine of a process group.
const (
	EnvProcessGroup  = "FLY_PROCESS_GROUP"
	EnvPrimaryRegion = "PRIMARY_REGION"
	MetaProcessGroup = "fly_process_group"
)

// DefaultProcessGroup is the group a machine runs when [processes] does not
// name one; fly launch writes processes = ["app"] for it.
const DefaultProcessGroup = "app"

// ProcessGroup is the app's main process group: "app" if [processes] is
// empty or defines it, else the first defined, by name. The release
// command's machine and config validate show it; a deploy runs every group
// (ProcessGroups).
func (c *Config) ProcessGroup() string {
	if len(c.Processes) == 0 {
		return DefaultProcessGroup
	}
	if _, ok := c.Processes[DefaultProcessGroup]; ok {
		return DefaultProcessGroup
	}
	return slices.Sorted(maps.Keys(c.Processes))[0]
}

// Guest is the machine size of the main process group.
func (c *Config) Guest() api.Guest { return c.vmFor(c.ProcessGroup()).Guest() }

// MachineConfig is the config of a machine of the main process group
// (MachineConfigFor).
func (c *Config) MachineConfig(image string) api.MachineConfig {
	return c.MachineConfigFor(c.ProcessGroup(), image)
}

// MachineConfigFor is the config of a machine of process group running
// image (the [build] image when image is ""): env, the group's guest size
// and command, the services of http_service and [[services]] that apply to
// the group, and [[statics]] when one of them serves HTTP.
func (c *Config) MachineConfigFor(group, image string) api.MachineConfig {
	mc := api.MachineConfig{
		Image:   image,
		Guest:   c.vmFor(group).Guest(),
		Restart: c.restartFor(group),
	}
	if mc.Image == "" {
		mc.Image = c.Build.Image
	}
	// As flyctl does: the machine learns its process group and the app's
	// primary region from its environment.
	mc.Env = maps.Clone(c.Env)
	if mc.Env == nil {
		mc.Env = map[string]string{}
	}
	mc.Env[EnvProcessGroup] = group
	if c.PrimaryRegion != "" {
		mc.Env[EnvPrimaryRegion] = c.PrimaryRegion
	}
	mc.Metadata = map[string]string{MetaProcessGroup: group}
	mc.Mounts = c.apiMounts(group) // mounts.go: volumes named, resolved by perch deploy
	mc.Files = c.apiFiles(group)   // files.go
	if c.KillSignal != "" || c.KillTimeout > 0 {
		mc.StopConfig = &api.StopConfig{Signal: c.KillSignal}
		if c.KillTimeout > 0 {
			mc.StopConfig.Timeout = c.KillTimeout.String()
		}
	}
	// [experimental] exec is the whole command line; entrypoint replaces
	// the image's (and its cmd, as in Docker); cmd and then the group's
	// [processes] command replace the image's cmd, as flyctl applies them.
	switch {
	case len(c.Init.Exec) > 0:
		mc.Init.Entrypoint = slices.Clone(c.Init.Exec)
	case len(c.Init.Entrypoint) > 0:
		mc.Init.Entrypoint = slices.Clone(c.Init.Entrypoint)
	}
	if len(c.Init.Exec) == 0 {
		mc.Init.Cmd = slices.Clone(c.Init.Cmd)
	}
	if cmd, ok := c.Processes[group]; ok {
		// Parse has checked that it splits.
		mc.Init.Cmd, _ = splitCommand(cmd)
	}
	if h := c.HTTPService; h != nil && appliesTo(h.Processes, group) {
		mc.Services = append(mc.Services, api.Service{
			Protocol:     "tcp",
			InternalPort: h.InternalPort,
			Ports: []api.Port{
				{Port: 80, Handlers: []string{"http"}, ForceHTTPS: h.ForceHTTPS, HTTPOptions: cloneHTTPOptions(h.HTTPOptions)},
				{Port: 443, Handlers: []string{"tls", "http"}, TLSOptions: cloneTLSOptions(h.TLSOptions), HTTPOptions: cloneHTTPOptions(h.HTTPOptions)},
			},
			Concurrency: withDefaults(h.Concurrency),
			Checks:      serviceChecks(h.Checks, h.InternalPort),
		})
		scaleToZero(&mc.Services[len(mc.Services)-1], h.AutoStopMachines, h.AutoStartMachines, h.MinMachinesRunning, h.IdleTimeout)
	}
	for _, s := range c.Services {
		if !appliesTo(s.Processes, group) {
			continue
		}
		svc := api.Service{
			Protocol:     s.Protocol,
			InternalPort: s.InternalPort,
			Concurrency:  withDefaults(s.Concurrency),
			Checks:       serviceChecks(s.Checks, s.InternalPort),
		}
		scaleToZero(&svc, s.AutoStopMachines, s.AutoStartMachines, s.MinMachinesRunning, s.IdleTimeout)
		for _, p := range s.Ports {
			p.Handlers = slices.Clone(p.Handlers)
			p.TLSOptions = cloneTLSOptions(p.TLSOptions)
			p.HTTPOptions = cloneHTTPOptions(p.HTTPOptions)
			if p.ProxyProtoOptions != nil {
				o := *p.ProxyProtoOptions
				p.ProxyProtoOptions = &o
			}
			svc.Ports = append(svc.Ports, p)
		}
		mc.Services = append(mc.Services, svc)
	}
	mc.Statics = c.staticsFor(mc) // statics.go
	return mc
}

// scaleToZero sets a service's autostop, autostart, min_machines_running
// and idle timeout as the file gave them.
func scaleToZero(svc *api.Service, stop string, start *bool, minRunning int, idle time.Duration) {
	svc.Autostop = api.Autostop(stop)
	if start != nil {
		b := *start
		svc.Autostart = &b
	}
	if minRunning > 0 {
		svc.MinMachinesRunning = &minRunning
	}
	if idle > 0 {
		svc.IdleTimeout = idle.String()
	}
}

// DefaultRestart is the restart policy of machines when perch.toml has no
// [[restart]]: restart a machine whose process fails, and mark it failed
// after the agent's retries.
var DefaultRestart = api.Restart{Policy: api.RestartOnFailure}

func (c *Config) restartFor(group string) api.Restart {
	for _, r := range c.Restarts {
		if appliesTo(r.Processes, group) && r.Policy != "" {
			return api.Restart{Policy: r.Policy, MaxRetries: r.MaxRetries}
		}
	}
	return DefaultRestart
}

func appliesTo(processes []string, group string) bool {
	return len(processes) == 0 || slices.Contains(processes, group)
}

// Fly's concurrency defaults: what a service gets for what it leaves out.
const (
	DefaultConcurrencyType = "connections"
	DefaultSoftLimit       = 20
)

// withDefaults is a copy of c with Fly's defaults for what it leaves out:
// type "connections", soft_limit 20 (at most hard_limit), no hard_limit.
func withDefaults(c *api.Concurrency) *api.Concurrency {
	cc := api.Concurrency{}
	if c != nil {
		cc = *c
	}
	if cc.Type == "" {
		cc.Type = DefaultConcurrencyType
	}
	if cc.SoftLimit == 0 {
		cc.SoftLimit = DefaultSoftLimit
		if cc.HardLimit > 0 {
			cc.SoftLimit = min(DefaultSoftLimit, cc.HardLimit)
		}
	}
	return &cc
}

// splitCommand splits a process command into words the way a POSIX shell
// does for quotes and backslashes, as Fly does; nothing else (no variables,
// no globs) is expanded.
func splitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("ends with a lone backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, errors.New("has a ' with no closing '")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				// Inside double quotes a backslash escapes only these.
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, errors.New("has a \" with no closing \"")
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, errors.New("is empty; write the command line, e.g. \"bin/server --port 8080\"")
	}
	return words, nil
}
