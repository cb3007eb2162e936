package machinedir

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestRecordsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "exit.json")
	var ex Exit
	if err := ReadJSON(path, &ex); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadJSON of a missing file = %v; want os.ErrNotExist", err)
	}
	if err := WriteExit(path, 137); err != nil {
		t.Fatal(err)
	}
	if err := ReadJSON(path, &ex); err != nil || ex.ExitCode != 137 || ex.ExitedAt.IsZero() {
		t.Fatalf("read back %+v, %v; want exit code 137 with a time", ex, err)
	}
	// The atomic write leaves no temporary files behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("dir holds %d entries after a write; want only exit.json", len(entries))
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ReadJSON(path, &ex); err == nil {
		t.Fatal("ReadJSON of a torn file succeeded")
	}
}

func TestList(t *testing.T) {
	root := t.TempDir()
	for _, id := range []string{"b", "a", "half"} {
		if err := os.Mkdir(filepath.Join(root, id), 0o700); err != nil {
			t.Fatal(err)
		}
		if id != "half" {
			if err := CreateFiles(filepath.Join(root, id), "record.json"); err != nil {
				t.Fatal(err)
			}
		}
	}
	ids, err := List(root, "record.json")
	if err != nil || !slices.Equal(ids, []string{"a", "b"}) {
		t.Fatalf("List = %v, %v; want [a b] (no record, no machine)", ids, err)
	}
}

func TestShimLifecycle(t *testing.T) {
	dir := t.TempDir()
	sh, exited, err := StartShim([]string{"sh", "-c", "sleep 30; :", dir}, filepath.Join(dir, "shim.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec Shim
	if err := ReadJSON(filepath.Join(dir, "shim.json"), &rec); err != nil || rec.Pid != sh.Pid {
		t.Fatalf("shim record %+v, %v; want pid %d", rec, err, sh.Pid)
	}
	alive := func() bool { return ProcAlive(sh.Pid, func(a string) bool { return a == dir }) }
	if !alive() || Gone(exited, alive) {
		t.Fatal("a running shim is not recognised")
	}
	if ProcAlive(sh.Pid, func(a string) bool { return a == dir+"x" }) {
		t.Fatal("a process is taken for another machine's shim")
	}
	if err := kill(sh.Pid); err != nil {
		t.Fatal(err)
	}
	if err := WaitGone(context.Background(), sh.Pid, alive, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	<-exited
	if !Gone(exited, alive) || !Gone(nil, alive) {
		t.Fatal("a killed shim is still reported running")
	}
}

// kill kills the shim's session, its sleep with it.
func kill(pid int) error {
	return syscall.Kill(-pid, syscall.SIGKILL)
}

func TestLocks(t *testing.T) {
	var l Locks
	unlock := l.Lock("a")
	l.Lock("b")() // another machine is not held up
	got := make(chan struct{})
	go func() {
		l.Lock("a")()
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("a second Lock of the same machine did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	unlock()
	<-got
}

// TestDiskUsage counts allocated blocks as du does: a sparse file's hole
// costs nothing, a hard link counts once, a missing path is 0.
func TestDiskUsage(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("x"), 1<<20)
	if err := os.WriteFile(filepath.Join(dir, "full"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "full"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n, err := DiskUsage(dir, filepath.Join(dir, "missing"))
	if err != nil {
		t.Fatal(err)
	}
	if n < 1<<20 || n > 1<<20+64<<10 {
		t.Errorf("disk usage %d bytes, want about 1 MiB (the file once, the hole free)", n)
	}
}
