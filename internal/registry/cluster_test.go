package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/testport"
)

// clusterServer is one control plane of the test's cluster: its NATS,
// its store connection and its registry, served over HTTP.
type clusterServer struct {
	nats *store.Embedded
	st   *store.Store
	reg  *Registry
	srv  *testServer
}

func (c *clusterServer) stop() {
	if c.srv != nil {
		c.srv.Close()
	}
	if c.reg != nil {
		c.reg.Close()
	}
	if c.st != nil {
		c.st.Close()
	}
	c.nats.Shutdown()
}

// TestImageServedByEveryServer: three servers' NATS in one JetStream
// cluster (every bucket and stream at R3), a registry on each. An image
// pushed through the first is pulled at once from the second, and from
// the third once the first is gone; the two left still take a push.
func TestImageServedByEveryServer(t *testing.T) {
	ctx := context.Background()
	var peers []string
	for range 3 {
		peers = append(peers, net.JoinHostPort("127.0.0.1", strconv.Itoa(testport.Free(t))))
	}
	servers := make([]*clusterServer, 3)
	for i := range servers {
		// With a leaf node port, as perch server --leaf-listen: its
		// JetStream has the domain perch.
		e, err := store.RunEmbeddedWith(t.TempDir(), "127.0.0.1:0", "tok", store.EmbeddedOptions{
			Cluster:    &store.Cluster{Name: "reg", Listen: peers[i], Peers: peers, ServerName: fmt.Sprint("s", i+1)},
			LeafListen: "127.0.0.1:0",
		}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		servers[i] = &clusterServer{nats: e}
	}
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				s.stop()
			}
		}
	})
	// Each server starts as perch server does (its store, then its
	// registry), the two that wait for s1's buckets and streams first.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for _, i := range []int{2, 1, 0} {
		s := servers[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.st, errs[i] = store.OpenWith(ctx, s.nats.URL(), store.Auth{User: store.ServerUser, Password: "tok"}, "registry-test",
				store.Options{Replicas: 3, Follower: i > 0})
			if errs[i] != nil {
				errs[i] = fmt.Errorf("open the store: %w", errs[i])
				return
			}
			s.reg, errs[i] = New(ctx, t.TempDir(), sharedOf(s.st), TokenFunc(func(tok string) bool { return tok == testToken }), Options{}, testLogger(t))
		}()
	}
	wg.Wait()
	for i, s := range servers {
		if errs[i] != nil {
			t.Fatalf("s%d: %v", i+1, errs[i])
		}
		s.srv = serve(t, s.reg)
	}

	img, _ := random.Image(1<<20, 3)
	dg, _ := img.Digest()
	if err := remote.Write(servers[0].srv.ref(t, "team/app:v1"), img, withToken(testToken)); err != nil {
		t.Fatalf("push through s1: %v", err)
	}
	pull := func(s *clusterServer, name, ref string) {
		t.Helper()
		got, err := remote.Image(s.srv.ref(t, ref), withToken(testToken))
		if err != nil {
			t.Fatalf("pull %s from %s: %v", ref, name, err)
		}
		if gd, _ := got.Digest(); gd != dg {
			t.Errorf("%s from %s has digest %s, want %s", ref, name, gd, dg)
		}
		if err := validate.Image(got); err != nil {
			t.Errorf("%s from %s: %v", ref, name, err)
		}
	}
	// At once: a miss catches up with the manifest stream.
	pull(servers[1], "s2", "team/app:v1")

	// A blob stored through s1 is there at once on s2, every time: its
	// reads are answered by the stream's leader, never by a replica
	// that has not stored it yet.
	for i := range 40 {
		body := fmt.Sprint("blob ", i, " written to s1, read from s2")
		sum := sha256.Sum256([]byte(body))
		dgst := "sha256:" + hex.EncodeToString(sum[:])
		resp := send(t, http.MethodPost, servers[0].srv.URL+"/v2/team/app/blobs/uploads/?digest="+dgst, strings.NewReader(body), nil)
		if msg := readAll(t, resp); resp.StatusCode != http.StatusCreated {
			t.Fatalf("blob %d to s1: %s %s", i, resp.Status, msg)
		}
		for _, m := range []string{http.MethodHead, http.MethodGet} {
			resp := send(t, m, servers[1].srv.URL+"/v2/team/app/blobs/"+dgst, nil, nil)
			got := readAll(t, resp)
			if resp.StatusCode != http.StatusOK || (m == http.MethodGet && got != body) {
				t.Fatalf("blob %d (of 40) from s2 right after its push to s1: %s %s %q", i, m, resp.Status, got)
			}
		}
	}

	servers[0].stop()
	servers[0] = nil
	pull(servers[2], "s3", "team/app:v1")
	pull(servers[2], "s3", "team/app@"+dg.String())

	img2, _ := random.Image(64<<10, 2)
	if err := remote.Write(servers[1].srv.ref(t, "team/app:v2"), img2, withToken(testToken)); err != nil {
		t.Fatalf("push through s2 with s1 gone: %v", err)
	}
	dg, _ = img2.Digest()
	pull(servers[2], "s3", "team/app:v2")

	// s3 alone: a push fails with a 503 in bounded time, not hangs.
	servers[1].stop()
	servers[1] = nil
	body := "a blob pushed without a quorum"
	sum := sha256.Sum256([]byte(body))
	start := time.Now()
	resp := send(t, http.MethodPost, servers[2].srv.URL+"/v2/team/app/blobs/uploads/?digest=sha256:"+hex.EncodeToString(sum[:]), strings.NewReader(body), nil)
	took := time.Since(start)
	msg := readAll(t, resp)
	t.Logf("blob push to s3 alone: %s after %s: %s", resp.Status, took.Round(time.Millisecond), strings.TrimSpace(msg))
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(msg, "majority of the control plane's servers") {
		t.Errorf("blob push to s3 alone: %s %s, want 503 asking for a majority of the servers", resp.Status, msg)
	}
	if took > 30*time.Second {
		t.Errorf("blob push to s3 alone took %s to fail, want seconds", took)
	}
}
