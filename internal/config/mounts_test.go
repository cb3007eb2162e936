package config

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// Fly's [[mounts]] processes = [...]: each mount goes to the machines of
// the groups it names (none named: every group), a group without one gets
// no volume, and the array and inline-table shapes real fly.toml files use
// read alike and survive a write.
func TestMountsPerProcessGroup(t *testing.T) {
	const head = `app = "m"
primary_region = "iad"
`
	const base = `[build]
  image = "img"
[processes]
  web = "bin/web"
  worker = "bin/worker"
  db = "bin/db"
`
	for name, mounts := range map[string]string{
		"array of tables": `
[[mounts]]
  source = "pg_data"
  destination = "/var/lib/pg"
  initial_size = "3gb"
  processes = ["db"]

[[mounts]]
  source = "jobs"
  destination = "/jobs"
  processes = ["worker"]
`,
		"inline tables": `
mounts = [
  { source = "pg_data", destination = "/var/lib/pg", initial_size = "3gb", processes = ["db"] },
  { source = "jobs", destination = "/jobs", processes = ["worker"] },
]
`,
	} {
		t.Run(name, func(t *testing.T) {
			c, warns, err := Parse("fly.toml", []byte(head+mounts+base), LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range warns {
				if strings.Contains(w.Msg, "mount") {
					t.Errorf("warned about mounts: %s", w)
				}
			}
			check := func(c *Config) {
				t.Helper()
				want := map[string][]api.Mount{
					"db":     {{Name: "pg_data", Path: "/var/lib/pg", SizeGB: 3}},
					"worker": {{Name: "jobs", Path: "/jobs"}},
					"web":    nil,
				}
				for g, mc := range c.MachineConfigs("img") {
					if diff := cmp.Diff(want[g], mc.Mounts); diff != "" {
						t.Errorf("group %s mounts (-want +got):\n%s", g, diff)
					}
				}
			}
			check(c)
			b, err := c.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			back, _, err := Parse("fly.toml", b, LoadOptions{})
			if err != nil {
				t.Fatalf("written config does not read back: %v\n%s", err, b)
			}
			check(back)
		})
	}

	t.Run("a mount without processes is every group's", func(t *testing.T) {
		c, _, err := Parse("fly.toml", []byte(base+"[mounts]\n  source = \"data\"\n  destination = \"/data\"\n"), LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for g, mc := range c.MachineConfigs("img") {
			if len(mc.Mounts) != 1 || mc.Mounts[0].Name != "data" {
				t.Errorf("group %s mounts %v, want data", g, mc.Mounts)
			}
		}
	})

	for name, tc := range map[string]struct{ mounts, want string }{
		"two mounts for one group": {`
[[mounts]]
  source = "a"
  destination = "/a"
[[mounts]]
  source = "b"
  destination = "/b"
  processes = ["web"]
`, "process group web gets 2 mounts (a, b); a machine mounts one volume"},
		"an unknown group": {`
[[mounts]]
  source = "a"
  destination = "/a"
  processes = ["wrker"]
`, `processes names "wrker", which [processes] does not define; the app's groups are db, web, worker`},
		"processes not a list": {`
[[mounts]]
  source = "a"
  destination = "/a"
  processes = "web"
`, `processes must be a list of strings, e.g. processes = ["app"]`},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := Parse("fly.toml", []byte(base+tc.mounts), LoadOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}
