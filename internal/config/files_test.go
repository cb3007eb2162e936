package config

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// fly.toml's [[files]]: raw_value (the content, which flyctl
// base64-encodes for the machine config), local_path (read next to the
// config) and secret_name become the machine config's files, each for the
// groups its processes names (all when none); bad ones are clear errors.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte("worker_processes 1;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	toml := `app = "f"
[processes]
  web = "nginx"
  worker = "bin/worker"

[[files]]
  guest_path = "/etc/app/motd"
  raw_value = """
hello
"""

[[files]]
  guest_path = "/etc/nginx/nginx.conf"
  local_path = "nginx.conf"
  processes = ["web"]

[[files]]
  guest_path = "/etc/worker/key.pem"
  secret_name = "WORKER_KEY"
  processes = ["worker"]
`
	path := filepath.Join(dir, "fly.toml")
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	c, warns, err := Load(path, LoadOptions{})
	if err != nil || len(warns) > 0 {
		t.Fatalf("%v, warnings %v", err, warns)
	}
	str := func(s string) *string { return &s }
	motd := api.File{GuestPath: "/etc/app/motd", RawValue: str(base64.StdEncoding.EncodeToString([]byte("hello\n")))}
	want := map[string][]api.File{
		"web":    {motd, {GuestPath: "/etc/nginx/nginx.conf", RawValue: str(base64.StdEncoding.EncodeToString([]byte("worker_processes 1;\n")))}},
		"worker": {motd, {GuestPath: "/etc/worker/key.pem", SecretName: str("WORKER_KEY")}},
	}
	check := func(c *Config) {
		t.Helper()
		for g, mc := range c.MachineConfigs("img") {
			if d := cmp.Diff(want[g], mc.Files); d != "" {
				t.Errorf("group %s files (-want +got):\n%s", g, d)
			}
		}
	}
	check(c)
	out, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	back, _, err := Load(path, LoadOptions{})
	if err != nil {
		t.Fatalf("written config does not read back: %v\n%s", err, out)
	}
	check(back)

	for _, tc := range []struct{ files, want string }{
		{"guest_path = \"/etc/x\"", "needs exactly one of raw_value (the content), local_path or secret_name"},
		{"guest_path = \"/etc/x\"\nraw_value = \"aGk=\"\nsecret_name = \"K\"", "needs exactly one of"},
		{"guest_path = \"etc/x\"\nraw_value = \"aGk=\"", `guest_path "etc/x" must be an absolute, clean path`},
		{"guest_path = \"/etc/x\"\nlocal_path = \"missing.conf\"", `local_path "missing.conf" cannot be read`},
		{"raw_value = \"aGk=\"", "[[files]] needs guest_path"},
		{"guest_path = \"/etc/x\"\nraw_value = \"aGk=\"\nprocesses = [\"db\"]", `processes names "db", which [processes] does not define`},
	} {
		_, _, err := Parse(filepath.Join(dir, "fly.toml"), []byte("app = \"f\"\n[[files]]\n"+tc.files+"\n"), LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to say %q", tc.files, err, tc.want)
		}
	}
}
