package store

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"
)

// linkProxy stands for a region's network link to the control plane: a
// loopback TCP relay that the test cuts (every connection closed, new
// ones refused) and restores.
type linkProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
}

func newLinkProxy(t *testing.T, target string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *linkProxy) url() string { return "nats-leaf://" + p.ln.Addr().String() }

func (p *linkProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

func leafWait(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %s", what, timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mirrorValue(ctx context.Context, kv jetstream.KeyValue, key string) string {
	e, err := kv.Get(ctx, key)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(e.Value())
}

// TestLeafKeepsMirrorsAcrossCutAndRestart runs a control plane's NATS
// taking leaf nodes and a host's leaf node behind a link the test cuts.
// The leaf mirrors the buckets the host reads; cut off, it is restarted
// (as an agent restarted while its region is cut off) and still has every
// spec it had; a spec changed and one added during the cut reach it once
// the link is back. A leaf node cannot mirror a bucket its host may not
// read (perch_secrets), nor connect with another host's password.
func TestLeafKeepsMirrorsAcrossCutAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	hub, err := RunEmbeddedWith(t.TempDir(), "127.0.0.1:0", "server-secret", EmbeddedOptions{LeafListen: "127.0.0.1:0"}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hub.Shutdown)
	srv, err := Open(ctx, hub.URL(), "server-secret", "server")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	bc, err := bcrypt.GenerateFromPassword([]byte("pw-a"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := hub.SetHostUsers(HostUser{HostID: "ams-aaaa", Region: "ams", PassBcrypt: string(bc), Machines: []string{"app1.m1"}}); err != nil {
		t.Fatal(err)
	}
	for kv, kvs := range map[jetstream.KeyValue][2]string{
		srv.Machines: {"app1.m1", `{"v":1}`}, srv.Apps: {"app1", `{"name":"app1"}`},
		srv.EdgeTLS: {"certificates/x/app1.crt", "cert"}, srv.Secrets: {"app1", `{"secret":"x"}`},
	} {
		if _, err := kv.Put(ctx, kvs[0], []byte(kvs[1])); err != nil {
			t.Fatal(err)
		}
	}
	link := newLinkProxy(t, hubLeafAddr(t, hub))
	dir := t.TempDir()
	// The host's leaf also tries to mirror perch_secrets, which its user
	// may not read: that mirror must stay empty.
	buckets := append(slices.Clone(LeafBuckets), BucketSecrets)
	leaf, err := RunLeaf(ctx, LeafConfig{Dir: dir, Remotes: []string{link.url()}, HostID: "ams-aaaa", Password: "pw-a", Buckets: buckets, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	leafWait(t, 30*time.Second, "the leaf mirrors the spec, app and certificate", func() (bool, string) {
		m, a, c := mirrorValue(ctx, leaf.KV(BucketMachines), "app1.m1"), mirrorValue(ctx, leaf.KV(BucketApps), "app1"), mirrorValue(ctx, leaf.KV(BucketEdgeTLS), "certificates/x/app1.crt")
		return m == `{"v":1}` && a == `{"name":"app1"}` && c == "cert", fmt.Sprint(m, a, c)
	})
	if v := mirrorValue(ctx, leaf.KV(BucketSecrets), "app1"); v != "<"+jetstream.ErrKeyNotFound.Error()+">" {
		t.Errorf("a host's leaf node mirrored perch_secrets: app1 = %s", v)
	}

	// The region is cut off, and its agent restarts meanwhile.
	link.setCut(true)
	leaf.Shutdown()
	if _, err := srv.Machines.Put(ctx, "app1.m1", []byte(`{"v":2}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Machines.Put(ctx, "app1.m2", []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	restart := time.Now()
	leaf, err = RunLeaf(ctx, LeafConfig{Dir: dir, Remotes: []string{link.url()}, HostID: "ams-aaaa", Password: "pw-a", Buckets: buckets, Log: log})
	if err != nil {
		t.Fatalf("the leaf does not start while cut off: %v", err)
	}
	t.Cleanup(leaf.Shutdown)
	t.Logf("leaf restarted while cut off in %s", time.Since(restart).Round(time.Millisecond))
	if v := mirrorValue(ctx, leaf.KV(BucketMachines), "app1.m1"); v != `{"v":1}` {
		t.Fatalf("after a restart while cut off, the mirror has app1.m1 = %s, want the spec it had", v)
	}
	if v := mirrorValue(ctx, leaf.KV(BucketApps), "app1"); v != `{"name":"app1"}` {
		t.Fatalf("after a restart while cut off, the mirror has app1 = %s", v)
	}
	if leaf.Connected() {
		t.Fatal("the leaf is connected through a cut link")
	}
	// A watch of the mirror (what the agent and edge run) sees the old
	// content now and the change once the link is back.
	w, err := leaf.KV(BucketMachines).WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		seen[e.Key()] = string(e.Value())
	}
	if seen["app1.m1"] != `{"v":1}` || len(seen) != 1 {
		t.Fatalf("a watch of the mirror while cut off reads %v, want app1.m1's old spec alone", seen)
	}
	link.setCut(false)
	back := time.Now()
	// Another host's password: that leaf node never connects.
	bad, err := RunLeaf(ctx, LeafConfig{Dir: t.TempDir(), Remotes: []string{link.url()}, HostID: "ams-aaaa", Password: "pw-b", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Shutdown()
	w.Stop()
	leafWait(t, 60*time.Second, "the changes made during the cut reach the leaf", func() (bool, string) {
		m1, m2 := mirrorValue(ctx, leaf.KV(BucketMachines), "app1.m1"), mirrorValue(ctx, leaf.KV(BucketMachines), "app1.m2")
		return m1 == `{"v":2}` && m2 == `{"v":1}`, m1 + " " + m2
	})
	t.Logf("the changes made during the cut reached the leaf %s after the link returned", time.Since(back).Round(time.Millisecond))
	if v := mirrorValue(ctx, leaf.KV(BucketSecrets), "app1"); v != "<"+jetstream.ErrKeyNotFound.Error()+">" {
		t.Errorf("a host's leaf node mirrored perch_secrets: app1 = %s", v)
	}
	if v := mirrorValue(ctx, bad.KV(BucketMachines), "app1.m1"); v != "<"+jetstream.ErrKeyNotFound.Error()+">" || bad.Connected() {
		t.Errorf("a leaf node with a wrong password connected (%v) and mirrored app1.m1 = %s", bad.Connected(), v)
	}

	// A removed host's leaf node is cut at once and gets nothing more.
	if err := hub.RemoveHostUser("ams-aaaa"); err != nil {
		t.Fatal(err)
	}
	leafWait(t, 30*time.Second, "the removed host's leaf node is disconnected", func() (bool, string) {
		return !leaf.Connected(), "still connected"
	})
	if _, err := srv.Machines.Put(ctx, "app1.m1", []byte(`{"v":3}`)); err != nil {
		t.Fatal(err)
	}
	// The same change reaches a leaf of a host still there (the witness
	// that it was sent), not the removed one's.
	if err := hub.SetHostUsers(HostUser{HostID: "ams-cccc", Region: "ams", PassBcrypt: string(bc)}); err != nil {
		t.Fatal(err)
	}
	other, err := RunLeaf(ctx, LeafConfig{Dir: t.TempDir(), Remotes: []string{link.url()}, HostID: "ams-cccc", Password: "pw-a", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Shutdown()
	leafWait(t, 30*time.Second, "another host's leaf mirrors the change", func() (bool, string) {
		v := mirrorValue(ctx, other.KV(BucketMachines), "app1.m1")
		return v == `{"v":3}`, v
	})
	if v := mirrorValue(ctx, leaf.KV(BucketMachines), "app1.m1"); v != `{"v":2}` || leaf.Connected() {
		t.Errorf("the removed host's leaf node (connected %v) has app1.m1 = %s, want the spec it had before its removal", leaf.Connected(), v)
	}
}

func hubLeafAddr(t *testing.T, e *Embedded) string {
	t.Helper()
	u, err := url.Parse(e.LeafURL())
	if err != nil || u.Host == "" {
		t.Fatalf("hub leaf URL %q: %v", e.LeafURL(), err)
	}
	return u.Host
}
