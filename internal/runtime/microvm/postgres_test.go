package microvm

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/testimage"
)

// TestDebianPostgres: Debian's postgres, built from its packages and
// pulled through the agent's image store (in layers), runs as a microVM as
// it does under runc: as the user postgres, with the image's
// /run/postgresql for its socket and lock file; psql on the host creates a
// table and reads it back, and the rows are still there after the machine
// is stopped with postgres's SIGINT and started again.
func TestDebianPostgres(t *testing.T) {
	needVM(t)
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("needs psql (Debian's postgresql-client; scripts/deps.sh installs it)")
	}
	br := hostnettest.New(t)
	img := testimage.Unpack(t, testimage.NeedDebian(t, testimage.Postgres()), "postgres:test")
	d := newTestDriver(t)
	spec := runtime.Spec{
		ID: "pgdebian", Rootfs: img.Rootfs, Layers: img.Layers,
		Process: runtime.Process{
			Args: append(append([]string{}, img.Config.Entrypoint...), img.Config.Cmd...),
			Env:  img.Config.Env, Cwd: img.Config.WorkingDir, User: img.Config.User,
		},
		Hostname: "pg", Net: br.Net(t), CPUs: 1, MemoryMB: 512,
	}
	ctx := context.Background()
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range d.Logs(spec.ID) {
				b, _ := os.ReadFile(l.Path)
				t.Logf("%s:\n%s", l.Stream, b)
			}
		}
		d.Destroy(context.Background(), spec.ID)
	})
	addr := spec.Net.Addr.Addr().String()
	sql := func(q string) string {
		t.Helper()
		cmd := exec.Command(psql, "-h", addr, "-U", "postgres", "-d", "postgres", "-At", "-c", q)
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("psql -c %q: %v\n%s", q, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	start := func() {
		t.Helper()
		begin := time.Now()
		if err := d.Start(ctx, spec.ID); err != nil {
			t.Fatal(err)
		}
		waitPostgres(t, psql, addr, 3*time.Minute)
		accel, _ := d.Accelerator()
		t.Logf("postgres answers %v after start (accelerator %s)", time.Since(begin).Round(time.Millisecond), accel)
	}
	start()
	sql("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept across restarts')")
	if got := sql("SELECT current_user || ' ' || (SELECT count(*) FROM notes)"); got != "postgres 1" {
		t.Errorf("SELECT = %q, want %q", got, "postgres 1")
	}
	if got := sql("SHOW unix_socket_directories"); got != "/var/run/postgresql" && got != "/run/postgresql" {
		t.Errorf("unix_socket_directories = %q, want Debian's /run/postgresql", got)
	}
	if err := d.Stop(ctx, spec.ID, syscall.SIGINT, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := d.State(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 0 {
		t.Errorf("postgres exited %d on SIGINT (a fast shutdown), want 0", st.ExitCode)
	}
	start()
	if got := sql("SELECT body FROM notes"); got != "kept across restarts" {
		t.Errorf("after a restart SELECT body = %q, want the row written before", got)
	}
}

// waitPostgres waits until the server at addr accepts a query.
func waitPostgres(t *testing.T, psql, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr+":5432", time.Second)
		if err == nil {
			c.Close()
			out, qerr := exec.Command(psql, "-h", addr, "-U", "postgres", "-At", "-c", "SELECT 1").CombinedOutput()
			if qerr == nil && strings.TrimSpace(string(out)) == "1" {
				return
			}
			err = fmt.Errorf("%v: %s", qerr, out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres at %s does not answer after %v: %v", addr, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
