package store

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestWatchStartsOverAfterARestart: a watcher gets the bucket's content,
// then each change; when NATS restarts (the server forgets the watch), it
// gets the whole content again, including what changed while it was gone,
// and changes after that.
func TestWatchStartsOverAfterARestart(t *testing.T) {
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	log := slog.New(slog.DiscardHandler)
	srv, err := RunEmbedded(dir, addr, "tok", log)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Shutdown() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := Open(ctx, srv.URL(), "tok", "watch-test")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Apps.Put(ctx, "a", []byte("1")); err != nil {
		t.Fatal(err)
	}
	changes := make(chan Change, 16)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { st.Watch(wctx, st.Apps, log, func(c Change) { changes <- c }); close(done) }()
	next := func(what string) Change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-ctx.Done():
			t.Fatalf("no change: %s", what)
			return Change{}
		}
	}
	if c := next("the initial content"); c.All == nil || string(c.All["a"]) != "1" || len(c.All) != 1 {
		t.Fatalf("first change %+v, want the whole bucket {a: 1}", c)
	}
	if _, err := st.Apps.Put(ctx, "b", []byte("2")); err != nil {
		t.Fatal(err)
	}
	if c := next("a put"); c.All != nil || c.Key != "b" || string(c.Value) != "2" || c.Deleted {
		t.Fatalf("after a put: %+v", c)
	}
	if err := st.Apps.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if c := next("a delete"); c.Key != "a" || !c.Deleted {
		t.Fatalf("after a delete: %+v", c)
	}

	// NATS restarts; meanwhile another client changes the bucket.
	srv.Shutdown()
	if srv, err = RunEmbedded(dir, addr, "tok", log); err != nil {
		t.Fatal(err)
	}
	other, err := Open(ctx, srv.URL(), "tok", "watch-test-2")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Apps.Put(ctx, "c", []byte("3")); err != nil {
		t.Fatal(err)
	}
	// The watch starts over with the whole content, before or after the
	// other client's put (both race the reconnect); changes after it
	// bring it up to date. What it sees must end as {b: 2, c: 3}.
	var state map[string]string
	for {
		c := next("the whole content after the restart, then c")
		switch {
		case c.All != nil:
			state = map[string]string{}
			for k, v := range c.All {
				state[k] = string(v)
			}
			if _, ok := state["a"]; ok || state["b"] != "2" {
				t.Fatalf("after the restart the content is %v, want b: 2 and no a", state)
			}
		case state == nil:
			continue // a change seen before the watch started over
		case c.Deleted:
			delete(state, c.Key)
		default:
			state[c.Key] = string(c.Value)
		}
		if len(state) == 2 && state["b"] == "2" && state["c"] == "3" {
			break
		}
	}
	if _, err := other.Apps.Put(ctx, "d", []byte(strconv.Itoa(4))); err != nil {
		t.Fatal(err)
	}
	for {
		c := next("a put after the restart")
		if c.Key == "d" && string(c.Value) == "4" {
			break
		}
	}
	stop()
	<-done
}

// lineCounter counts log records by level and message.
type lineCounter struct {
	mu    sync.Mutex
	lines map[string]int
}

func (c *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *lineCounter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines[r.Level.String()+" "+r.Message]++
	return nil
}
func (c *lineCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *lineCounter) WithGroup(string) slog.Handler      { return c }
func (c *lineCounter) count(line string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lines[line]
}

// TestWatchSaysAFailureOnce: a watch that cannot start (here its bucket
// is gone; on a host, a cut from the control plane) retries every
// watchRetry for as long as it lasts, but says so once at warning level,
// not on every retry; when the bucket is back it says so and delivers
// its content.
func TestWatchSaysAFailureOnce(t *testing.T) {
	old := watchRetry
	watchRetry = 10 * time.Millisecond
	defer func() { watchRetry = old }()
	srv, err := RunEmbedded(t.TempDir(), "127.0.0.1:0", "tok", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := Open(ctx, srv.URL(), "tok", "watch-fail-test")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := jetstream.KeyValueConfig{Bucket: "watch_fail_test"}
	kv, err := st.JetStream().CreateKeyValue(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.JetStream().DeleteKeyValue(ctx, cfg.Bucket); err != nil {
		t.Fatal(err)
	}
	lines := &lineCounter{lines: map[string]int{}}
	changes := make(chan Change, 16)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { st.Watch(wctx, kv, slog.New(lines), func(c Change) { changes <- c }); close(done) }()
	for lines.count("DEBUG cannot watch bucket; retrying") < 5 {
		if ctx.Err() != nil {
			t.Fatalf("the watch did not retry: %v", lines.lines)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := lines.count("WARN cannot watch bucket; retrying"); n != 1 {
		t.Fatalf("%d warnings for one failure retried %d times, want 1", n, lines.count("DEBUG cannot watch bucket; retrying"))
	}
	kv2, err := st.JetStream().CreateKeyValue(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv2.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	for seen := false; !seen; {
		select {
		case c := <-changes:
			seen = c.All != nil && string(c.All["k"]) == "v" || c.Key == "k"
		case <-ctx.Done():
			t.Fatal("the watch did not deliver the bucket once it was back")
		}
	}
	if n := lines.count("INFO watching bucket again"); n != 1 {
		t.Fatalf("%d lines saying the watch is back, want 1", n)
	}
	stop()
	<-done
}
