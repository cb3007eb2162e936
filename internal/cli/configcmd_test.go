package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	loggedOut(t) // it never needs the control plane
	dir := t.TempDir()
	fly := strings.Join([]string{
		`app = "shop"`,
		`kill_signal = "SIGINT"`,
		`kill_timeout = 5`,
		`[experimental]`,
		`  cmd = "bin/shop serve"`,
		`[[services]]`,
		`  internal_port = "8080"`,
		`  protocol = "tcp"`,
		`  [[services.ports]]`,
		`    port = "443"`,
		`    handlers = ["tls", "http"]`,
		`  [[services.tcp_checks]]`,
		`    interval = 10000`,
		`    timeout = 20000`,
		`[[mounts]]`,
		`  source = "data"`,
		`  destination = "/data"`,
		`  auto_extend_size_threshold = 80`,
	}, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "fly.toml"), []byte(fly), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, "", "config", "validate", "--config", "fly.toml")
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	for _, want := range []string{
		"fly.toml is valid, with 1 warning",
		`command:        ["bin/shop" "serve"]`,
		"stop:           SIGINT, then SIGKILL after 5s",
		"service:        tcp 443 (tls+http) -> internal port 8080",
		"concurrency:  connections, soft limit 20, no hard limit",
		"check:        tcp every 10s, timeout 20s, grace 1s",
		"env:            FLY_PROCESS_GROUP=app",
		"regions:        the regions the app already runs in, else pass perch deploy --region (no primary_region)",
		`fly.toml line 18: "auto_extend_size_threshold" in [[mounts]] ignored: volumes are not extended automatically yet`,
		"volume:         data at /data",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, err = run(t, dir, "", "config", "validate", "--config", "fly.toml", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var v validatedConfig
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if v.App != "shop" || len(v.Machine.Services) != 1 || v.Machine.Services[0].Ports[0].Port != 443 || len(v.Warnings) != 1 {
		t.Errorf("--json = %+v", v)
	}

	if err := os.WriteFile(filepath.Join(dir, "bad.toml"), []byte("[[services]]\ninternal_port = 70000\nports = [{ port = 80 }]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = run(t, dir, "", "config", "validate", "--config", "bad.toml")
	wantErr(t, err, "bad.toml line 2: internal_port must be 1-65535, got 70000")
	_, err = run(t, dir, "", "config", "validate", "--config", "missing.toml")
	wantErr(t, err, "no missing.toml here")
}

// In a directory moved over from Fly (a fly.toml, no perch.toml) commands
// read fly.toml without --config; a perch.toml beside it wins.
func TestFlyTomlReadWithoutConfigFlag(t *testing.T) {
	loggedOut(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fly.toml"), []byte("app = \"from-fly\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, dir, "", "config", "validate")
	if err != nil || !strings.Contains(out, "fly.toml is valid") {
		t.Fatalf("validate with only fly.toml: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "perch.toml"), []byte("app = \"from-perch\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, dir, "", "config", "validate")
	if err != nil || !strings.Contains(out, "perch.toml is valid") {
		t.Fatalf("validate with both: %v\n%s", err, out)
	}
}

// A fly.toml with two process groups and statics (roqr.toml of the
// config corpus): each group's machine is described, the worker with no
// service.
func TestConfigValidateProcessGroups(t *testing.T) {
	loggedOut(t)
	out, err := run(t, "", "", "config", "validate", "--config", "../config/testdata/flytoml/roqr.toml")
	if err != nil {
		t.Fatalf("validate: %v\n%s", err, out)
	}
	web, worker, ok := strings.Cut(out, "process group:  worker")
	if !ok || !strings.Contains(web, "process group:  web") || !strings.Contains(web, "service:        tcp 80 (http)") {
		t.Fatalf("no web then worker group:\n%s", out)
	}
	for _, want := range []string{`command:        ["rake" "jobs:work"]`, "services:       none (no public ports)", "static:         / -> /app/public of the image"} {
		if !strings.Contains(worker, want) {
			t.Errorf("output lacks %q after the worker group:\n%s", want, out)
		}
	}
	js, err := run(t, "", "", "config", "validate", "--config", "../config/testdata/flytoml/roqr.toml", "--json")
	var v validatedConfig
	if err != nil || json.Unmarshal([]byte(js), &v) != nil || len(v.Processes) != 2 || len(v.Processes["worker"].Services) != 0 {
		t.Errorf("--json: %d processes, err %v\n%s", len(v.Processes), err, js)
	}
}
