package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/testport"
)

// testCluster makes the route addresses and shared secrets of a cluster
// of control planes in this process (docs/servers.md: init-cluster, the
// secrets copied into every --data-dir).
type testCluster struct {
	t       *testing.T
	name    string
	secrets string // the secrets' directory
	routes  map[string]string
}

func newTestCluster(t *testing.T, name string) *testCluster {
	dir := t.TempDir()
	if _, err := InitClusterSecrets(dir); err != nil {
		t.Fatal(err)
	}
	return &testCluster{t: t, name: name, secrets: dir, routes: map[string]string{}}
}

// route is server's route address, picked once.
func (c *testCluster) route(server string) string {
	if c.routes[server] == "" {
		c.routes[server] = net.JoinHostPort("127.0.0.1", strconv.Itoa(testport.Free(c.t)))
	}
	return c.routes[server]
}

// dataDir is a new data dir holding the cluster's secrets.
func (c *testCluster) dataDir() string {
	dir := c.t.TempDir()
	ents, err := os.ReadDir(c.secrets)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(c.secrets, e.Name()))
		if err != nil {
			c.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			c.t.Fatal(err)
		}
	}
	return dir
}

// start starts servers (names) together, each with --cluster-peers
// listing peers (names, in order: the first makes the buckets), on the
// data dirs given (by name; a new one if missing).
func (c *testCluster) start(names, peers []string, dirs map[string]string) map[string]*testServer {
	c.t.Helper()
	var addrs []string
	for _, p := range peers {
		addrs = append(addrs, c.route(p))
	}
	out := map[string]*testServer{}
	errs := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range names {
		dir := dirs[n]
		if dir == "" {
			dir = c.dataDir()
		}
		cfg := Config{Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "127.0.0.1:0", HostTimeout: time.Hour,
			Cluster: &store.Cluster{Name: c.name, Listen: c.route(n), Peers: addrs, ServerName: n},
			Log:     slog.New(slog.NewTextHandler(testWriter{c.t}, &slog.HandlerOptions{Level: slog.LevelWarn})).With("server", n)}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ts, err := runServer(c.t, cfg)
			mu.Lock()
			defer mu.Unlock()
			out[n], errs[n] = ts, err
		}()
	}
	wg.Wait()
	for _, n := range names {
		if errs[n] != nil {
			c.t.Fatalf("start %s: %v", n, errs[n])
		}
	}
	return out
}

// waitUntil polls cond until it returns "" (nothing missing), failing the
// test with its last answer after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		missing := cond()
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %s: %s", what, d, missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// settled says what keeps st from a cluster of exactly servers, all up
// and current, every stream at 3 replicas on them, all current.
func settled(st *api.ClusterStatus, servers ...string) string {
	var names []string
	for _, s := range st.Servers {
		if !s.Up || !s.Current {
			return fmt.Sprintf("server %s up %v current %v", s.Name, s.Up, s.Current)
		}
		names = append(names, s.Name)
	}
	if !slices.Equal(names, servers) {
		return fmt.Sprintf("servers %v, want %v", names, servers)
	}
	if len(st.Errors) > 0 {
		return strings.Join(st.Errors, "; ")
	}
	for _, s := range st.Streams {
		on := []string{s.Leader}
		for _, p := range s.Peers {
			if !p.Current || p.Offline {
				return fmt.Sprintf("stream %s: replica on %s not current", s.Name, p.Name)
			}
			on = append(on, p.Name)
		}
		if s.Replicas != 3 || len(on) != 3 {
			return fmt.Sprintf("stream %s on %v, want 3 replicas", s.Name, on)
		}
		for _, n := range on {
			if !slices.Contains(servers, n) {
				return fmt.Sprintf("stream %s has a replica on %s", s.Name, n)
			}
		}
	}
	return ""
}

// leadStream makes server the leader of stream, and leadMeta makes it
// JetStream's meta leader: a leader stepdown with a preferred placement,
// asked through ts (the meta one from the system account), until ts sees
// server lead.
func leadStream(t *testing.T, ts *testServer, stream, server string) {
	t.Helper()
	lead(t, ts.st.Conn(), "$JS.API.STREAM.LEADER.STEPDOWN."+stream, server, func() string {
		st, err := ts.st.JetStream().Stream(context.Background(), stream)
		if err != nil || st.CachedInfo().Cluster == nil {
			return ""
		}
		return st.CachedInfo().Cluster.Leader
	})
}

func (c *testCluster) leadMeta(ts *testServer, server string) {
	c.t.Helper()
	pass, err := os.ReadFile(filepath.Join(c.secrets, "nats-token"))
	if err != nil {
		c.t.Fatal(err)
	}
	sys, err := nats.Connect(ts.nats.URL(), nats.UserInfo(store.SystemUser, strings.TrimSpace(string(pass))))
	if err != nil {
		c.t.Fatal(err)
	}
	defer sys.Close()
	lead(c.t, sys, "$JS.API.META.LEADER.STEPDOWN", server, func() string { return ts.nats.Meta().Leader })
}

func lead(t *testing.T, nc *nats.Conn, stepdown, server string, leader func() string) {
	t.Helper()
	waitUntil(t, 30*time.Second, server+" leads ("+stepdown+")", func() string {
		switch l := leader(); l {
		case server:
			return ""
		case "":
			return "no leader"
		default:
			msg, err := nc.Request(stepdown, []byte(`{"placement":{"preferred":"`+server+`"}}`), 5*time.Second)
			if err != nil {
				return fmt.Sprintf("leader %s; stepdown: %v", l, err)
			}
			return fmt.Sprintf("leader %s; stepdown answered %s", l, msg.Data)
		}
	})
}

// TestAddAndRemoveServer follows docs/operations.md: a fourth server
// joins a running cluster of three with --cluster-peers naming the four
// (the three running keep theirs: nats-server gossips the new route to
// them), answers the API at once; then s1 is stopped and removed for
// good with `perch server remove` (DELETE /v1/cluster/servers/s1): every
// bucket and stream is back at three replicas on s2, s3, s4 (so s4 holds
// a replica of each), writes and reads work through every server, and
// perch server status no longer lists s1.
func TestAddAndRemoveServer(t *testing.T) {
	ctx := context.Background()
	c := newTestCluster(t, "ops")
	three := []string{"s1", "s2", "s3"}
	srv := c.start(three, three, nil)
	if _, err := srv["s1"].c.CreateApp(ctx, api.CreateAppRequest{AppName: "before"}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	s4 := c.start([]string{"s4"}, []string{"s1", "s2", "s3", "s4"}, nil)["s4"]
	srv["s4"] = s4
	t.Logf("s4 joined and answers in %s", time.Since(start).Round(time.Millisecond))
	if _, err := s4.c.GetApp(ctx, "before"); err != nil {
		t.Fatalf("s4 reads an app made before it joined: %v", err)
	}
	if _, err := s4.c.CreateApp(ctx, api.CreateAppRequest{AppName: "through-s4"}); err != nil {
		t.Fatalf("a write through s4: %v", err)
	}
	// Every server knows the four, though s1-s3 were told of three.
	for _, n := range three {
		waitUntil(t, 30*time.Second, n+" sees four servers", func() string {
			st, err := srv[n].c.ClusterStatus(ctx)
			if err != nil {
				return err.Error()
			}
			var names []string
			for _, s := range st.Servers {
				if s.Up {
					names = append(names, s.Name)
				}
			}
			if !slices.Equal(names, []string{"s1", "s2", "s3", "s4"}) {
				return fmt.Sprintf("servers up %v", names)
			}
			return ""
		})
	}

	// Refusals change nothing.
	_, err := srv["s2"].c.RemoveServer(ctx, "s9")
	wantStatus(t, err, http.StatusConflict, `no server named "s9"`)
	_, err = srv["s2"].c.RemoveServer(ctx, "s2")
	wantStatus(t, err, http.StatusConflict, "does not remove itself")

	// s1 leads JetStream's meta group and the tokens' bucket when it
	// stops, the worst case: every request's token lookup meets the
	// elections of their new leaders, and the removal (a write) must
	// wait them out rather than fail.
	c.leadMeta(srv["s2"], "s1")
	leadStream(t, srv["s2"], "KV_"+store.BucketTokens, "s1")
	srv["s1"].stop()
	delete(srv, "s1")
	start = time.Now()
	res, err := srv["s2"].c.RemoveServer(ctx, "s1")
	if err != nil {
		t.Fatalf("remove s1: %v", err)
	}
	t.Logf("s1 removed in %s: %d streams moved", time.Since(start).Round(time.Millisecond), len(res.Streams))
	left := []string{"s2", "s3", "s4"}
	var st *api.ClusterStatus
	waitUntil(t, 60*time.Second, "status after s1's removal", func() string {
		// As the meta leader sees it: a follower's view of the others'
		// progress is as old as the last vote they sent it.
		var err error
		if st, err = srv["s2"].c.ClusterStatus(ctx); err != nil {
			return err.Error()
		}
		if srv[st.MetaLeader] == nil {
			return fmt.Sprintf("meta leader %q", st.MetaLeader)
		}
		if st, err = srv[st.MetaLeader].c.ClusterStatus(ctx); err != nil {
			return err.Error()
		}
		return settled(st, left...)
	})
	for _, n := range left {
		st, err := srv[n].c.ClusterStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st.Servers {
			if s.Name == "s1" || !s.Up {
				t.Errorf("status on %s lists %s, up %v; want s2, s3, s4 up", n, s.Name, s.Up)
			}
		}
	}
	if len(res.Streams) == 0 || len(st.Streams) < 10 {
		t.Errorf("%d streams moved, %d streams in all: want every bucket and stream", len(res.Streams), len(st.Streams))
	}
	for i, n := range left {
		name := "after-" + n
		if _, err := srv[n].c.CreateApp(ctx, api.CreateAppRequest{AppName: name}); err != nil {
			t.Fatalf("a write through %s after s1's removal: %v", n, err)
		}
		reader := srv[left[(i+1)%len(left)]]
		for _, app := range []string{"before", "through-s4", name} {
			if _, err := reader.c.GetApp(ctx, app); err != nil {
				t.Errorf("read %s after s1's removal: %v", app, err)
			}
		}
	}
	// Three left, at three replicas: none can go.
	_, err = srv["s2"].c.RemoveServer(ctx, "s3")
	wantStatus(t, err, http.StatusConflict, "would leave 2 servers")
}
