package runc

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
)

// agentStart is a short-lived agent: it starts machine args[2] of state
// dir args[0] with shim args[1] and exits.
func agentStart(args []string) int {
	d, err := New(Config{StateDir: args[0], ShimCommand: []string{args[1], "runc-shim"}})
	if err == nil {
		err = d.Start(context.Background(), args[2])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestMachineOutlivesAgentProcess starts a machine from a process that then
// exits, reading its output through pipes as a supervisor would: the pipes
// must close when that process exits, and the machine must keep serving.
func TestMachineOutlivesAgentProcess(t *testing.T) {
	needRoot(t)
	br := hostnettest.New(t)
	d := newTestDriver(t)
	destroyAll(t, d)
	spec := runtime.Spec{
		ID:      "outlive" + fmt.Sprint(os.Getpid()),
		Rootfs:  drivertest.BuildRootfs(t),
		Process: runtime.Process{Args: []string{"/app", "serve"}, Env: []string{"PORT=8080", "MESSAGE=still here"}},
		Net:     br.Net(t),
	}
	if err := d.Create(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "agent-start", testStateDir(t), exe, spec.ID)
	cmd.WaitDelay = 5 * time.Second // a shim holding the pipes would hit it
	begin := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("agent process: %v\n%s", err, out)
	}
	if took := time.Since(begin); took > 4*time.Second {
		t.Errorf("agent process took %v to finish: something held its output pipes", took)
	}

	st, err := d.State(context.Background(), spec.ID)
	if err != nil || st.Status != runtime.StatusRunning {
		t.Fatalf("after the agent exited: State = %+v, %v; want running", st, err)
	}
	url := fmt.Sprintf("http://%s:8080/", spec.Net.Addr.Addr())
	client := &http.Client{Transport: &http.Transport{}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s: %d %s", url, resp.StatusCode, body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine does not answer after its agent exited: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Stop(context.Background(), spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if st, err := d.State(context.Background(), spec.ID); err != nil || st.Status != runtime.StatusExited || st.ExitCode != 0 {
		t.Fatalf("State after Stop = %+v, %v; want exited with code 0", st, err)
	}
}
