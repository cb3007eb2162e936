package config

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
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
		if tc.warn == "" && len(warns) > 0 {
			t.Errorf("%s: warnings %v, want none", tc.toml, warns)
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

// [deploy.release_command_vm] (and release_command_compute) sizes the
// release command's machine as Fly does; without it the machine has the
// app's size; its runtime is the app's unless it names one; a bad size is
// an error; it survives a write.
func TestReleaseCommandVM(t *testing.T) {
	app := api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 256, Runtime: "microvm"}
	for _, tc := range []struct {
		toml string
		want api.Guest
		err  string
	}{
		{toml: ``, want: app},
		{toml: "[deploy.release_command_vm]\nsize = \"performance-2x\"\nmemory = \"8gb\"", want: api.Guest{CPUKind: "performance", CPUs: 2, MemoryMB: 8192, Runtime: "microvm"}},
		{toml: "[deploy.release_command_compute]\nmemory = 1024\nruntime = \"runc\"", want: api.Guest{CPUKind: "shared", CPUs: 1, MemoryMB: 1024, Runtime: "runc"}},
		{toml: "[deploy.release_command_vm]\nsize = \"huge\"", err: `vm size "huge" is not a size`},
	} {
		c, warns, err := Parse("fly.toml", []byte("app = \"a\"\n[deploy]\nrelease_command = \"bin/migrate\"\n"+tc.toml+"\n"), LoadOptions{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want one saying %q", tc.toml, err, tc.err)
			}
			continue
		}
		if err != nil || len(warns) > 0 {
			t.Fatalf("%s: %v, warnings %v", tc.toml, err, warns)
		}
		if d := cmp.Diff(tc.want, c.Deploy.ReleaseGuest(app)); d != "" {
			t.Errorf("%s: release guest (-want +got):\n%s", tc.toml, d)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		back, _, err := Parse("fly.toml", out, LoadOptions{})
		if err != nil {
			t.Fatalf("%s: written config does not read back: %v\n%s", tc.toml, err, out)
		}
		if d := cmp.Diff(tc.want, back.Deploy.ReleaseGuest(app)); d != "" {
			t.Errorf("%s: after a write (-want +got):\n%s", tc.toml, d)
		}
	}
}
