package config

import (
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// releaseCommand reads [deploy] release_command and
// release_command_timeout.
func (d *decoder) releaseCommand(s *section, dep *Deploy) {
	if cmd, p, ok := s.str("release_command"); ok {
		args, err := splitCommand(cmd)
		switch {
		case strings.TrimSpace(cmd) == "" || (err == nil && len(args) == 0):
			d.errorf(p, "release_command is empty; name the command to run before each deploy, e.g. release_command = \"bin/rails db:migrate\", or remove it")
		case err != nil:
			d.errorf(p, "release_command %q %v; quote it as a shell would", cmd, err)
		default:
			dep.ReleaseCommand = args
		}
	}
	dep.ReleaseCommandTimeout = d.seconds(s, "release_command_timeout")
}

// ReleaseTimeout is release_command_timeout, or Fly's default.
func (dep Deploy) ReleaseTimeout() time.Duration {
	if dep.ReleaseCommandTimeout > 0 {
		return dep.ReleaseCommandTimeout
	}
	return DefaultReleaseCommandTimeout
}

// ReleaseGuest is the release command machine's guest: app's (the
// release's main machine config's) unless [deploy.release_command_vm]
// sizes it; its runtime is the app's unless that names one.
func (dep Deploy) ReleaseGuest(app api.Guest) api.Guest {
	v := dep.ReleaseCommandVM
	if v == nil {
		return app
	}
	g := v.Guest()
	if v.Runtime == "" {
		g.Runtime = app.Runtime
	}
	return g
}

// shellJoin writes args back as splitCommand reads them.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n\r'\"\\$`;&|<>(){}*?[]#~") {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
