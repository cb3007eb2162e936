package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestReleaseCommand(t *testing.T) {
	for _, tc := range []struct {
		toml    string
		args    []string
		timeout time.Duration
		warn    string
		err     string
	}{
		{toml: `release_command = "bin/rails db:migrate"`, args: []string{"bin/rails", "db:migrate"}, timeout: DefaultReleaseCommandTimeout},
		{toml: "release_command = \"sh -c 'echo a b'\"\nrelease_command_timeout = \"30s\"", args: []string{"sh", "-c", "echo a b"}, timeout: 30 * time.Second},
		{toml: "release_command = \"x\"\nrelease_command_timeout = 90", args: []string{"x"}, timeout: 90 * time.Second},
		{toml: "release_command = \"x\"\n[deploy.release_command_vm]\nsize = \"shared-cpu-1x\"", args: []string{"x"}, timeout: DefaultReleaseCommandTimeout, warn: "the release command's machine has the app's [[vm]] size"},
		{toml: `release_command = "sh -c 'unclosed"`, err: "has a ' with no closing '"},
		{toml: `release_command = " "`, err: "release_command is empty"},
		{toml: "release_command = \"x\"\nrelease_command_timeout = \"soon\"", err: "is not a duration"},
	} {
		c, warns, err := Parse("fly.toml", []byte("app = \"a\"\n[deploy]\n"+tc.toml+"\n"), LoadOptions{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one saying %q", tc.toml, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.toml, err)
			continue
		}
		if d := cmp.Diff(tc.args, c.Deploy.ReleaseCommand); d != "" || c.Deploy.ReleaseTimeout() != tc.timeout {
			t.Errorf("%s: args %s timeout %s, want %s", tc.toml, d, c.Deploy.ReleaseTimeout(), tc.timeout)
		}
		if tc.warn != "" && (len(warns) != 1 || !strings.Contains(warns[0].Msg, tc.warn)) {
			t.Errorf("%s: warnings %v, want one saying %q", tc.toml, warns, tc.warn)
		}
		// What marshal writes reads back the same.
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := Parse("fly.toml", out, LoadOptions{})
		if err != nil || !cmp.Equal(back.Deploy.ReleaseCommand, c.Deploy.ReleaseCommand) {
			t.Errorf("%s: round trip %v %v\n%s", tc.toml, back.Deploy.ReleaseCommand, err, out)
		}
	}
}
