package server

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// TestLeafBootstrap: with --leaf-listen, a host's bootstrap names the
// leaf node URL, and a leaf node logged in with the host's credential
// mirrors the host records (its own, once registered); without it the
// bootstrap names none and agents connect as before.
func TestLeafBootstrap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	plain := startServer(t, t.TempDir())
	jt, err := plain.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "iad"})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := api.NewClient(plain.URL(), jt.Token).JoinHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if boot, err := api.NewClient(plain.URL(), cred.Bearer()).Bootstrap(ctx); err != nil || boot.NATSLeafURL != "" {
		t.Fatalf("bootstrap without --leaf-listen: %+v, %v; want no leaf URL", boot, err)
	}

	s := startServer(t, t.TempDir(), func(c *Config) { c.LeafListen = "127.0.0.1:0" })
	jt, err = s.c.CreateJoinToken(ctx, api.JoinTokenRequest{Region: "ams"})
	if err != nil {
		t.Fatal(err)
	}
	cred, err = api.NewClient(s.URL(), jt.Token).JoinHost(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host := api.NewClient(s.URL(), cred.Bearer())
	boot, err := host.Bootstrap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if boot.NATSLeafURL == "" {
		t.Fatalf("bootstrap with --leaf-listen names no leaf URL: %+v", boot)
	}
	if _, err := host.RegisterHost(ctx, api.Host{Region: "ams", CPUs: 1, MemoryMB: 512}); err != nil {
		t.Fatal(err)
	}
	leaf, err := store.RunLeaf(ctx, store.LeafConfig{Dir: t.TempDir(), Remotes: []string{boot.NATSLeafURL},
		HostID: boot.NATSUser, Password: cred.Secret, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer leaf.Shutdown()
	for {
		h, _, err := store.Get[api.Host](ctx, leaf.KV(store.BucketHosts), cred.HostID)
		if err == nil && h.Region == "ams" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the host's leaf node never mirrored its host record: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
