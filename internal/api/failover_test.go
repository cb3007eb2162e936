package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A client given a cluster's servers sends to the next when one refuses
// connections, and stays with the one that answered.
func TestClientFailsOverBetweenServers(t *testing.T) {
	// A port nothing listens on: a server that is down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + l.Addr().String()
	l.Close()
	var posts atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
		}
		_ = json.NewEncoder(w).Encode(App{Name: "a"})
	}))
	defer up.Close()
	c := NewClient(down+", "+up.URL+"/", "tok")
	ctx := context.Background()
	for range 3 {
		if _, err := c.CreateApp(ctx, CreateAppRequest{AppName: "a"}); err != nil {
			t.Fatalf("create through the second server: %v", err)
		}
	}
	if n := posts.Load(); n != 3 {
		t.Errorf("the live server took %d creates, want 3 (each sent once)", n)
	}
	if got := c.urls[c.cur.Load()]; got != up.URL {
		t.Errorf("client stays with %s, want the server that answered, %s", got, up.URL)
	}
	// Every server down: the error names the last one tried.
	all := NewClient(down+","+down, "tok")
	if _, err := all.CreateApp(ctx, CreateAppRequest{AppName: "a"}); err == nil {
		t.Fatal("create with every server down succeeded")
	}
}

// A POST whose connection broke after it was sent is not sent again to
// another server: it may have been applied.
func TestClientDoesNotResendWritesAfterSending(t *testing.T) {
	var first, second atomic.Int32
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first.Add(1)
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close() // the server died after reading the request
	}))
	defer broken.Close()
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		second.Add(1)
		_ = json.NewEncoder(w).Encode(App{Name: "a"})
	}))
	defer other.Close()
	c := NewClient(broken.URL+","+other.URL, "tok")
	if _, err := c.CreateApp(context.Background(), CreateAppRequest{AppName: "a"}); err == nil {
		t.Fatal("a create whose connection broke reported success")
	}
	if second.Load() != 0 {
		t.Errorf("the create was sent again to the other server (%d times)", second.Load())
	}
	// A GET is safe to send again.
	if _, err := c.ListApps(context.Background()); err != nil {
		t.Fatalf("list after a broken connection: %v", err)
	}
	if second.Load() != 1 {
		t.Errorf("the list went %d times to the other server, want 1", second.Load())
	}
}

// A read answered 503 with a Retry-After (a cluster electing a leader)
// is asked again and succeeds; a write is not sent again, and a 503
// without Retry-After (a lost quorum) is returned at once.
func TestClientWaitsOutAnElectionForReads(t *testing.T) {
	old := readRetryFor
	readRetryFor = 3 * time.Second
	defer func() { readRetryFor = old }()
	var gets, posts atomic.Int32
	electing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int32
		if r.Method == http.MethodPost {
			n = posts.Add(1)
		} else {
			n = gets.Add(1)
		}
		if n <= 2 || r.URL.Path == "/v1/apps/lost" {
			if r.URL.Path != "/v1/apps/lost" {
				w.Header().Set("Retry-After", "1")
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(Error{Error: "a new leader is being elected"})
			return
		}
		_ = json.NewEncoder(w).Encode(App{Name: "a"})
	}))
	defer electing.Close()
	c := NewClient(electing.URL, "tok")
	ctx := context.Background()
	start := time.Now()
	if _, err := c.GetApp(ctx, "a"); err != nil {
		t.Fatalf("a read during an election: %v, want it asked again until answered", err)
	}
	if n, took := gets.Load(), time.Since(start); n != 3 || took < 2*time.Second {
		t.Errorf("the read was sent %d times in %v, want 3, a Retry-After (1 s) apart", n, took)
	}
	_, err := c.CreateApp(ctx, CreateAppRequest{AppName: "a"})
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable || posts.Load() != 1 {
		t.Errorf("a write during an election: %v after %d sends, want the 503 after one", err, posts.Load())
	}
	before := gets.Load()
	if _, err := c.GetApp(ctx, "lost"); !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable || gets.Load() != before+1 {
		t.Errorf("a read answered 503 without Retry-After: %v after %d sends, want the 503 after one", err, gets.Load()-before)
	}
}

// A wait the server never answers (a frozen control plane, or one gone
// without closing the connection) ends a margin after its timeout with
// an error saying so, instead of holding the command forever (`perch
// scale count` hung over 12 minutes once after a server's SIGKILL).
func TestWaitEndsWhenTheServerNeverAnswers(t *testing.T) {
	old := waitMargin
	waitMargin = 300 * time.Millisecond
	defer func() { waitMargin = old }()
	release := make(chan struct{})
	frozen := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // answers nothing until the test ends
	}))
	defer frozen.Close()
	defer close(release)
	c := NewClient(frozen.URL, "tok")
	start := time.Now()
	err := c.WaitMachine(context.Background(), "a", "m1", StateStarted, time.Second)
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "gave no answer") {
		t.Errorf("a wait never answered: %v, want an error saying the control plane gave no answer", err)
	}
	if took < time.Second || took > 10*time.Second {
		t.Errorf("the wait ended after %v; want its 1 s timeout and the 300 ms margin", took)
	}
	// A caller's own deadline is the caller's: not blamed on the server.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.WaitMachine(ctx, "a", "m1", StateStarted, time.Second); err == nil || strings.Contains(err.Error(), "gave no answer") {
		t.Errorf("a wait whose caller gave up: %v, want the caller's deadline", err)
	}
}
