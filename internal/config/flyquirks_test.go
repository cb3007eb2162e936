package config

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/perchhq/perch/internal/api"
)

// [experimental] cmd, entrypoint and exec and a [processes] command
// override the image's as flyctl applies them: exec is the whole command
// line, entrypoint replaces the image's, and the group's command wins over
// cmd.
func TestInitOverrides(t *testing.T) {
	for _, tc := range []struct {
		name string
		file string
		want api.MachineInit
	}{
		{"cmd list", "[experimental]\ncmd = ['server', '--port', '8080']\n", api.MachineInit{Cmd: []string{"server", "--port", "8080"}}},
		{"cmd string", "[experimental]\ncmd = \"npm run 'prod build'\"\n", api.MachineInit{Cmd: []string{"npm", "run", "prod build"}}},
		{"entrypoint", "[experimental]\nentrypoint = ['/bin/sh', '-c']\ncmd = ['echo hi']\n",
			api.MachineInit{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"echo hi"}}},
		{"exec", "[experimental]\nexec = ['/app/run', 'all']\ncmd = ['ignored']\n", api.MachineInit{Entrypoint: []string{"/app/run", "all"}}},
		{"processes over cmd", "[experimental]\ncmd = ['old']\n[processes]\napp = 'bin/web -p 80'\n", api.MachineInit{Cmd: []string{"bin/web", "-p", "80"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, warns, err := Parse("fly.toml", []byte(tc.file), LoadOptions{})
			if err != nil || len(warns) > 0 {
				t.Fatalf("Parse: %v, warnings %v", err, warnings(warns))
			}
			if diff := cmp.Diff(tc.want, c.MachineConfig("img").Init); diff != "" {
				t.Errorf("init (-want +got):\n%s", diff)
			}
			roundTrip(t, c)
		})
	}
	_, _, err := Parse("fly.toml", []byte("[experimental]\ncmd = \"run 'x\"\n"), LoadOptions{})
	if err == nil || err.Error() != `fly.toml line 2: cmd "run 'x" has a ' with no closing '` {
		t.Errorf("unbalanced quote in cmd: %v", err)
	}
}

// Old files: "soft,hard" concurrency, [[env]] tables, processes = [...],
// a [[services]] without protocol, memory beside memory_mb.
func TestOldFlyForms(t *testing.T) {
	data := lines(
		"app = 'old'",              // 1
		"[[env]]",                  // 2
		"  A = 1",                  // 3
		"[[env]]",                  // 4
		"  B = 'two'",              // 5
		"[[services]]",             // 6
		"  internal_port = '8080'", // 7
		"  concurrency = '12,23'",  // 8
		"  [[services.ports]]",     // 9
		"    port = '80'",          // 10
		"    handlers = ['http']",  // 11
		"[[vm]]",                   // 12
		"  memory = '1gb'",         // 13
		"  memory_mb = 512",        // 14
		"[[processes]]",            // 15
		"  name = 'app'",           // 16
	)
	c, warns, err := Parse("fly.toml", []byte(data), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantWarns := []string{
		`fly.toml line 6: [[services]] has no protocol; served as "tcp", as Fly v1 did (write protocol = "tcp" to say so)`,
		`fly.toml line 14: memory_mb = 512 ignored: memory on line 13 (1024 MB) wins, as on Fly; set only one`,
		`fly.toml line 15: [[processes]] ignored: flyctl ignores a list of process groups too; write them as a table: [processes] app = "command"`,
	}
	if diff := cmp.Diff(wantWarns, warnings(warns)); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	mc := c.MachineConfig("img")
	wantSvc := []api.Service{{
		Protocol: "tcp", InternalPort: 8080,
		Ports:       []api.Port{{Port: 80, Handlers: []string{"http"}}},
		Concurrency: &api.Concurrency{Type: "requests", SoftLimit: 12, HardLimit: 23},
	}}
	if diff := cmp.Diff(wantSvc, mc.Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	if mc.Env["A"] != "1" || mc.Env["B"] != "two" {
		t.Errorf("env = %v, want A=1 and B=two from both [[env]] tables", mc.Env)
	}
	if mc.Guest.MemoryMB != 1024 {
		t.Errorf("memory = %d MB, want 1024 (memory wins over memory_mb)", mc.Guest.MemoryMB)
	}
	_, _, err = Parse("fly.toml", []byte("[[services]]\ninternal_port = 80\nconcurrency = 'lots'\n"), LoadOptions{})
	if err == nil || err.Error() != `fly.toml line 3: concurrency "lots" is not "soft,hard" limits; write e.g. concurrency = "20,25", or a [services.concurrency] table` {
		t.Errorf("bad concurrency string: %v", err)
	}
}

// Fly's concurrency defaults fill what a service leaves out.
func TestConcurrencyDefaults(t *testing.T) {
	for _, tc := range []struct {
		table string
		want  api.Concurrency
	}{
		{"", api.Concurrency{Type: "connections", SoftLimit: 20}},
		{"[http_service.concurrency]\ntype = 'requests'\n", api.Concurrency{Type: "requests", SoftLimit: 20}},
		{"[http_service.concurrency]\nhard_limit = 10\n", api.Concurrency{Type: "connections", SoftLimit: 10, HardLimit: 10}},
		{"[http_service.concurrency]\nhard_limit = 50\n", api.Concurrency{Type: "connections", SoftLimit: 20, HardLimit: 50}},
		{"[http_service.concurrency]\nsoft_limit = 80\n", api.Concurrency{Type: "connections", SoftLimit: 80}},
	} {
		c, _, err := Parse("fly.toml", []byte("[http_service]\ninternal_port = 8080\n"+tc.table), LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.MachineConfig("img").Services[0].Concurrency; got == nil || *got != tc.want {
			t.Errorf("%q: concurrency = %+v, want %+v", tc.table, got, tc.want)
		}
	}
}

func TestKillTimeoutForms(t *testing.T) {
	for _, v := range []string{"5", "'5'", "'5s'"} {
		c, _, err := Parse("fly.toml", []byte("kill_signal = 'sigint'\nkill_timeout = "+v+"\n"), LoadOptions{})
		if err != nil {
			t.Fatalf("kill_timeout = %s: %v", v, err)
		}
		want := &api.StopConfig{Signal: "SIGINT", Timeout: "5s"}
		if got := c.MachineConfig("img").StopConfig; !cmp.Equal(got, want) {
			t.Errorf("kill_timeout = %s: stop_config %+v, want %+v", v, got, want)
		}
	}
	_, _, err := Parse("fly.toml", []byte("env = 'PORT=8080'\n"), LoadOptions{})
	if err == nil || err.Error() != `fly.toml line 1: env must be a table, e.g. [env] then PORT = "8080" on the next line, got "PORT=8080"` {
		t.Errorf("env as a string: %v", err)
	}
}
