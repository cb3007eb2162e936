package devcluster_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/devcluster"
	"github.com/perchhq/perch/internal/testimage"
)

// TestRawTCPServiceEndToEnd deploys the raw TCP sample app (examples/tcpecho)
// to one region and reaches it through every region's edge: a port with no
// handlers passes bytes through (the app greets first, so nothing waits
// for the client), a port with "proxy_proto" tells the app the real
// client, and a second app cannot take the same raw TCP port.
func TestRawTCPServiceEndToEnd(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{})
	info := w.Info()
	ref := pushGoImage(t, info, "./examples/tcpecho", "tcpecho:v1")
	raw, proxied := freePort(t), freePort(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "perch.toml"), fmt.Sprintf(`
app = "tcpecho"
primary_region = "iad"

[build]
  image = %q

[env]
  PORT = "7000"
  PROXY_PORT = "7001"

[[services]]
  protocol = "tcp"
  internal_port = 7000
  [[services.ports]]
    port = %d

[[services]]
  protocol = "tcp"
  internal_port = 7001
  [[services.ports]]
    port = %d
    handlers = ["proxy_proto"]
    proxy_proto_options = { version = "v2" }
`, ref, raw, proxied))
	ctx := context.Background()
	if _, err := w.Client().CreateApp(ctx, api.CreateAppRequest{AppName: "tcpecho"}); err != nil {
		t.Fatal(err)
	}
	mustPerch(t, w, dir, "deploy")

	for _, r := range info.Regions {
		addr := net.JoinHostPort(r.EdgeAddr, fmt.Sprint(raw))
		var greeting string
		eventually(t, 30*time.Second, "the "+r.Code+" edge passes raw TCP to the app", func() (bool, string) {
			g, echoed, err := tcpEcho(addr, "ping over "+r.Code)
			greeting = g
			if err != nil {
				return false, err.Error()
			}
			return echoed == "ping over "+r.Code, fmt.Sprintf("greeting %q, echo %q", g, echoed)
		})
		if !strings.HasPrefix(greeting, "tcpecho in iad (machine ") {
			t.Errorf("%s edge: greeting %q, want the machine in iad", r.Code, greeting)
		}

		// Through "proxy_proto" the app sees this test's own address.
		c, err := net.DialTimeout("tcp", net.JoinHostPort(r.EdgeAddr, fmt.Sprint(proxied)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if want := "sees client " + c.LocalAddr().String() + "\n"; err != nil || !strings.HasSuffix(line, want) {
			t.Errorf("%s edge, proxy_proto port: app said %q (%v), want it to end with %q", r.Code, line, err, want)
		}
		c.Close()
	}

	// A second app may not take the raw TCP port: perch deploy says why.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "perch.toml"), fmt.Sprintf(`
app = "copycat"
primary_region = "ams"
[build]
  image = %q
[[services]]
  protocol = "tcp"
  internal_port = 7000
  [[services.ports]]
    port = %d
`, ref, raw))
	if _, err := w.Client().CreateApp(ctx, api.CreateAppRequest{AppName: "copycat"}); err != nil {
		t.Fatal(err)
	}
	out, err := perch(t, w, other, "deploy")
	if err == nil || !strings.Contains(out, `app "tcpecho" already uses port`) || !strings.Contains(out, "needs a port of its own") {
		t.Errorf("deploy of a second app on the raw TCP port: %v\n%s\nwant it refused, saying the port is taken", err, out)
	}
}

// tcpEcho connects to addr, reads the app's greeting, sends msg, closes
// its side and reads the echo.
func tcpEcho(addr, msg string) (greeting, echoed string, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	greeting, err = r.ReadString('\n')
	if err != nil {
		return greeting, "", fmt.Errorf("greeting: %w", err)
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return greeting, "", err
	}
	c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(r)
	return strings.TrimSuffix(greeting, "\n"), string(b), err
}

// pushGoImage builds the Go package pkg into an image and pushes it to the
// world's registry as repo.
func pushGoImage(t *testing.T, info devcluster.Info, pkg, repo string) string {
	t.Helper()
	img, err := testimage.BuildGo(repoRoot(), pkg)
	if err != nil {
		t.Fatal(err)
	}
	ref := info.Registry + "/" + repo
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithAuth(&authn.Basic{Username: "x", Password: info.Token})); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return ref
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRawTCPNoMachineInPerchLogs: once the raw TCP app's only machine is
// stopped, a client's connection is closed, and the app's owner learns
// why from `perch logs` and the edge's metrics.
func TestRawTCPNoMachineInPerchLogs(t *testing.T) {
	t.Parallel() // see TestMain
	w := startWorld(t, devcluster.Options{Regions: []string{"iad"}})
	info := w.Info()
	ref := pushGoImage(t, info, "./examples/tcpecho", "tcpecho:v1")
	port := freePort(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "perch.toml"), fmt.Sprintf(`
app = "tcpecho"
primary_region = "iad"

[build]
  image = %q

[env]
  PORT = "7000"

[[services]]
  protocol = "tcp"
  internal_port = 7000
  [[services.ports]]
    port = %d
`, ref, port))
	ctx := context.Background()
	if _, err := w.Client().CreateApp(ctx, api.CreateAppRequest{AppName: "tcpecho"}); err != nil {
		t.Fatal(err)
	}
	mustPerch(t, w, dir, "deploy")
	edge := info.Regions[0].EdgeAddr
	addr := net.JoinHostPort(edge, fmt.Sprint(port))
	eventually(t, 30*time.Second, "the edge passes raw TCP to the app", func() (bool, string) {
		_, echoed, err := tcpEcho(addr, "ping")
		return err == nil && echoed == "ping", fmt.Sprintf("echo %q, %v", echoed, err)
	})
	machines, err := w.Client().ListMachines(ctx, "tcpecho", "")
	if err != nil || len(machines) != 1 {
		t.Fatalf("machines of tcpecho: %v %+v", err, machines)
	}
	mustPerch(t, w, dir, "machine", "stop", machines[0].ID)

	var client string
	eventually(t, 30*time.Second, "the edge closes a connection with no machine to go to", func() (bool, string) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return false, err.Error()
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		client = c.LocalAddr().(*net.TCPAddr).IP.String()
		b, err := io.ReadAll(c)
		return err == nil && len(b) == 0, fmt.Sprintf("read %q, %v", b, err)
	})

	want := fmt.Sprintf("tcpecho[edge] iad [edge] raw TCP connection from %s to port %d closed: no machine to go to: app tcpecho has no started machine for port %d",
		client, port, port)
	eventually(t, 10*time.Second, "perch logs shows why the edge closed the connection", func() (bool, string) {
		out, err := perch(t, w, dir, "logs")
		return err == nil && strings.Contains(out, want), out
	})
	metrics := "http://" + net.JoinHostPort(edge, fmt.Sprint(devcluster.MetricsPort)) + "/metrics"
	if line := metricLine(scrapeText(metrics), "perch_edge_tcp_rejected_total", `app="tcpecho"`, `reason="no_machine"`); line == "" {
		t.Errorf("the edge's /metrics has no perch_edge_tcp_rejected_total{app=\"tcpecho\",reason=\"no_machine\"}")
	}
}
