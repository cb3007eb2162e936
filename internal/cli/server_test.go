package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/server"
)

// startServer runs a real control plane (embedded NATS, registry) on
// loopback ports and returns its URL and admin token.
func startServer(t *testing.T) (string, string) {
	t.Helper()
	srv := startServerWith(t)
	return srv.URL(), srv.AdminToken()
}

// startServerWith is startServer, giving the server itself.
func startServerWith(t *testing.T) *server.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{
		Listen:      "127.0.0.1:0",
		NATSListen:  "127.0.0.1:0",
		DataDir:     t.TempDir(),
		HostTimeout: 2 * time.Second,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	return srv
}

// TestAgainstServer drives the commands that need no agent against a real
// control plane: login from a dev world, launch, a deploy whose machine
// never starts (no agent runs), status, apps.
func TestAgainstServer(t *testing.T) {
	loggedOut(t)
	url, token := startServer(t)
	ctx := context.Background()

	// A host that registered but runs no agent: machines get placed on it
	// and never start.
	c := api.NewClient(url, token)
	host, err := c.RegisterHost(ctx, api.Host{Region: "iad", Address: "127.0.0.1", CPUs: 2, MemoryMB: 2048})
	if err != nil {
		t.Fatal(err)
	}
	// Keep the host up, as its agent's heartbeat would, until "apps destroy"
	// lets it die.
	hbCtx, stopHeartbeat := context.WithCancel(ctx)
	defer stopHeartbeat()
	go func() {
		for hbCtx.Err() == nil {
			c.RegisterHost(hbCtx, *host)
			select {
			case <-hbCtx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()

	t.Run("login", func(t *testing.T) {
		_, err := run(t, "", "", "auth", "login", "--api", url, "--token", "wrong")
		wantErr(t, err, "rejected the token")

		world := t.TempDir()
		js, _ := json.Marshal(map[string]any{"api_url": url, "token": token, "registry": "x", "regions": []any{}})
		os.WriteFile(filepath.Join(world, "world.json"), js, 0o600)
		t.Setenv(envDevDir, world)
		out, err := run(t, "", "", "auth", "login")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "Logged in to "+url) {
			t.Errorf("login said %q", out)
		}
		out, err = run(t, "", "", "auth", "whoami")
		if err != nil || !strings.Contains(out, url) || !strings.Contains(out, "valid") {
			t.Errorf("whoami: %q, %v", out, err)
		}
	})

	t.Run("wrong token hints at login", func(t *testing.T) {
		t.Setenv(envAPIToken, "wrong")
		_, err := run(t, "", "", "apps", "list")
		wantErr(t, err, "401", "perch auth login")
	})

	dir := t.TempDir()
	t.Run("launch", func(t *testing.T) {
		_, err := run(t, "", "", "launch", "--image", "127.0.0.1:1/none:1", "--regions", "iad,xyz", "--dir", dir)
		wantErr(t, err, `unknown region "xyz"`, "iad")

		out, err := run(t, "", "", "launch", "--image", "127.0.0.1:1/none:1", "--regions", "iad,ams", "--name", "hello", "--dir", dir)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "perch deploy") {
			t.Errorf("launch did not say what to run next: %q", out)
		}
		if _, err := os.Stat(filepath.Join(dir, "perch.toml")); err != nil {
			t.Fatal(err)
		}
		_, err = run(t, "", "", "launch", "--image", "x", "--name", "hello", "--dir", t.TempDir())
		wantErr(t, err, "app name hello is taken", "--name")
	})

	t.Run("deploy whose machine does not start", func(t *testing.T) {
		out, err := run(t, dir, "", "deploy", "--wait-timeout", "1s", "--smoke-window", "0")
		t.Logf("deploy output:\n%s\nerror: %v", out, err)
		wantErr(t, err, "failed", "in iad was not ready after 1s", "the app keeps the release it had")
		for _, want := range []string{"iad: machine", "was not ready", "destroyed the new machine"} {
			if !strings.Contains(out, want) {
				t.Errorf("deploy output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("region without host", func(t *testing.T) {
		_, err := run(t, dir, "", "scale", "count", "1", "--region", "ams", "--app", "hello")
		wantErr(t, err, "no machine to copy")
		other := t.TempDir()
		if _, err := run(t, "", "", "launch", "--image", "x", "--regions", "ams", "--name", "faraway", "--dir", other); err != nil {
			t.Fatal(err)
		}
		_, err = run(t, other, "", "deploy")
		wantErr(t, err, "ams", "422")
	})

	t.Run("read commands", func(t *testing.T) {
		out, err := run(t, dir, "", "status")
		if err != nil || !strings.Contains(out, "App: hello") {
			t.Errorf("status: %q, %v", out, err)
		}
		out, err = run(t, dir, "", "apps", "list", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var apps []api.App
		if err := json.Unmarshal([]byte(out), &apps); err != nil || len(apps) != 2 {
			t.Errorf("apps list --json = %q (%v), want 2 apps", out, err)
		}
		if _, err := run(t, dir, "", "logs"); err != nil {
			t.Errorf("logs of an app without lines: %v", err)
		}
		out, err = run(t, "", "", "regions")
		if err != nil || !strings.Contains(out, "iad") || strings.Contains(out, "ams") {
			t.Errorf("regions (only those with hosts): %q, %v", out, err)
		}
	})

	t.Run("apps destroy", func(t *testing.T) {
		// No agent will ever destroy the machines: once the host is seen
		// down, the control plane forgets them itself.
		stopHeartbeat()
		deadline := time.Now().Add(10 * time.Second)
		for {
			hs, _ := c.ListHosts(ctx)
			if len(hs) == 1 && hs[0].Status == api.HostDown {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("host never marked down: %+v", hs)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, name := range []string{"hello", "faraway"} {
			if _, err := run(t, "", "", "apps", "destroy", name, "--yes"); err != nil {
				t.Fatal(err)
			}
		}
		_, err := run(t, "", "", "status", "--app", "hello")
		wantErr(t, err, "404")
	})
}
