package config

import (
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// groupName is what Fly accepts as a process group's name.
var groupName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ProcessGroups are the process groups of the app, sorted: those of
// [processes], or DefaultProcessGroup when it defines none.
func (c *Config) ProcessGroups() []string {
	if len(c.Processes) == 0 {
		return []string{DefaultProcessGroup}
	}
	return slices.Sorted(maps.Keys(c.Processes))
}

// MachineConfigs is the machine config of every process group, by name.
func (c *Config) MachineConfigs(image string) map[string]api.MachineConfig {
	out := map[string]api.MachineConfig{}
	for _, g := range c.ProcessGroups() {
		out[g] = c.MachineConfigFor(g, image)
	}
	return out
}

// checkProcessNames fails for a group name Fly refuses, and for a
// processes = [...] (on a service, [[vm]], [[restart]], [[mounts]] or [[files]]) naming a group
// the app does not define: nothing would ever run what it configures.
func (d *decoder) checkProcessNames(c *Config, doc map[string]any) {
	for _, name := range slices.Sorted(maps.Keys(c.Processes)) {
		if !groupName.MatchString(name) {
			d.errorf(path{"processes", name}, "process group name %q is not valid; use lowercase letters, digits, \"-\" and \"_\", e.g. worker", name)
		}
	}
	groups := c.ProcessGroups()
	check := func(p path, t any) {
		m, _ := t.(map[string]any)
		names, _ := m["processes"].([]any)
		for _, n := range names {
			if s, ok := n.(string); ok && !slices.Contains(groups, s) {
				d.errorf(p.key("processes"), "processes names %q, which [processes] does not define; the app's groups are %s", s, strings.Join(groups, ", "))
				return
			}
		}
	}
	for _, k := range []string{"http_service", "services", "vm", "compute", "restart", "mounts", "mount", "files"} {
		switch v := doc[k].(type) {
		case map[string]any:
			check(path{k}, v)
		case []any:
			for i, t := range v {
				check(path{k}.index(i), t)
			}
		}
	}
}
