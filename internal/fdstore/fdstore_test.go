package fdstore

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestListenerKeptAcrossRestart: a listener a Client opened is stored by
// the Store; while no process listens, a client's connection is queued by
// the kernel (not refused); a new Client given the store's descriptors
// listens on the same socket and accepts that connection.
func TestListenerKeptAcrossRestart(t *testing.T) {
	s, err := NewStore(filepath.Join(t.TempDir(), "notify.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	env, files := s.Env()
	if len(files) != 0 {
		t.Fatalf("a new store passes %d descriptors", len(files))
	}
	setEnv(t, env)
	c := FromEnv(nil)
	if os.Getenv(EnvNotifySocket) != "" {
		t.Errorf("FromEnv left %s set", EnvNotifySocket)
	}
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	name := Name("tcp", addr)
	waitFor(t, "the store keeps the listener", func() bool { return slices.Equal(s.Names(), []string{name}) })
	ln.Close() // the process is gone

	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("a connection while nothing listens was refused: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}

	// The next start: the kept socket, passed as fd 3, through a child's
	// view of it (the test process's own fd table).
	env, files = s.Env()
	if len(files) != 1 {
		t.Fatalf("the store passes %d descriptors, want 1", len(files))
	}
	fd := files[0]
	// Stand in for exec: the descriptor where a child would find it is
	// the one FromEnv reads; here FromEnv is given it through an inherited map.
	c2 := &Client{notify: s.path, log: c.log, inherited: map[string]*os.File{name: fd}}
	ln2, err := c2.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	got, err := ln2.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	buf := make([]byte, 6)
	got.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := got.Read(buf); err != nil || string(buf) != "queued" {
		t.Fatalf("the new listener read %q, %v; want the queued connection's bytes", buf, err)
	}
	_ = env

	// Released: the store closes its copy; once the process closes its
	// own, the port refuses connections.
	c2.Release("tcp", addr)
	waitFor(t, "the store forgets the listener", func() bool { return len(s.Names()) == 0 })
	ln2.Close()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("a released port still accepts connections")
	}
}

func setEnv(t *testing.T, env []string) {
	for _, kv := range env {
		k, v, _ := cutEq(kv)
		t.Setenv(k, v)
	}
}

func cutEq(kv string) (string, string, bool) {
	for i := range len(kv) {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestStoredListenerStillCloses: storing a listener leaves it what it was:
// Close ends a blocked Accept (a socket put in blocking mode by taking its
// descriptor would keep Accept, and the agent's shutdown, waiting).
func TestStoredListenerStillCloses(t *testing.T) {
	s, err := NewStore(filepath.Join(t.TempDir(), "notify.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := &Client{notify: s.path, log: FromEnv(nil).log, inherited: map[string]*os.File{}}
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the store keeps the listener", func() bool { return len(s.Names()) == 1 })
	// The store hands out a copy (as for a restart) while the listener runs.
	_, files := s.Env()
	for _, f := range files {
		f.Close()
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Accept block (no condition to poll)
	closed := make(chan struct{})
	go func() { ln.Close(); close(closed) }()
	select {
	case err := <-accepted:
		if err == nil {
			t.Fatal("Accept returned a connection nobody made")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked 5 s after Close: the stored socket went into blocking mode")
	}
	<-closed
}

// TestChildTakesKeptSocket: a process started with the store's Env (the
// kept socket as fd 3, LISTEN_FDS, LISTEN_FDNAMES) listens on it through
// FromEnv and accepts the connection queued while nothing listened; the
// variables are gone from its environment.
func TestChildTakesKeptSocket(t *testing.T) {
	if os.Getenv("FDSTORE_TEST_CHILD") != "" {
		return // the child runs from TestMain
	}
	s, err := NewStore(filepath.Join(t.TempDir(), "notify.sock"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := &Client{notify: s.path, log: FromEnv(nil).log, inherited: map[string]*os.File{}}
	ln, err := c.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	waitFor(t, "the store keeps the listener", func() bool { return len(s.Names()) == 1 })
	ln.Close()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("refused while nothing listened: %v", err)
	}
	defer conn.Close()

	env, files := s.Env()
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	cmd.Env = append(os.Environ(), append(env, "FDSTORE_TEST_CHILD="+addr)...)
	cmd.ExtraFiles = files
	out, err := cmd.CombinedOutput()
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil || string(b) != "served by the child; env clear" {
		t.Fatalf("the queued connection got %q, %v; child said:\n%s", b, err, out)
	}
}

func TestMain(m *testing.M) {
	if addr := os.Getenv("FDSTORE_TEST_CHILD"); addr != "" {
		os.Exit(child(addr))
	}
	os.Exit(m.Run())
}

// child is the restarted process of TestChildTakesKeptSocket.
func child(addr string) int {
	c := FromEnv(nil)
	if c.inherited[Name("tcp", addr)] == nil {
		fmt.Println("no kept socket for", addr, "among", len(c.inherited))
		return 1
	}
	ln, err := c.Listen("tcp", addr)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	conn, err := ln.Accept()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	msg := "served by the child; env clear"
	for _, v := range []string{EnvNotifySocket, EnvListenFDs, EnvListenNames} {
		if os.Getenv(v) != "" {
			msg = v + " still set"
		}
	}
	conn.Write([]byte(msg))
	conn.Close()
	return 0
}
