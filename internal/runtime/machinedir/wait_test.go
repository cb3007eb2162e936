package machinedir

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/perchhq/perch/internal/runtime"
)

// stateFromDir reports the machine in dir exited once its exit record is
// there, counting how often it was asked.
func stateFromDir(dir string, calls *atomic.Int64) func(context.Context) (runtime.State, error) {
	return func(context.Context) (runtime.State, error) {
		calls.Add(1)
		if ex, ok := ReadExit(filepath.Join(dir, "exit.json")); ok {
			return Exited(runtime.State{}, ex), nil
		}
		return runtime.State{Status: runtime.StatusRunning}, nil
	}
}

// TestWaitWakesOnExitRecord: with the fallback recheck an hour away, Wait
// still returns as soon as the shim's exit record is written, having looked
// at the running machine only when its directory changed.
func TestWaitWakesOnExitRecord(t *testing.T) {
	old := Recheck
	Recheck = time.Hour
	t.Cleanup(func() { Recheck = old })

	dir := t.TempDir()
	var calls atomic.Int64
	type result struct {
		st  runtime.State
		err error
	}
	res := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		st, err := Wait(ctx, dir, stateFromDir(dir, &calls))
		res <- result{st, err}
	}()
	// Wait has looked once and is parked on the watch.
	for calls.Load() == 0 {
		select {
		case r := <-res:
			t.Fatalf("Wait returned before the machine exited: %+v, %v", r.st, r.err)
		case <-time.After(time.Millisecond):
		}
	}
	if err := WriteExit(filepath.Join(dir, "exit.json"), 7); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.st.Status != runtime.StatusExited || r.st.ExitCode != 7 {
		t.Fatalf("Wait = %+v, %v; want exited with code 7", r.st, r.err)
	}
	// One look before the record, and one per directory event after it
	// (the temporary file's close and the rename): never a timed poll.
	if n := calls.Load(); n > 3 {
		t.Fatalf("state was asked %d times for one exit; want at most 3 (no polling)", n)
	}
}

// TestWaitRechecksWithoutEvents: a shim that dies without writing a record
// leaves no event; the recheck still finds the exit.
func TestWaitRechecksWithoutEvents(t *testing.T) {
	old := Recheck
	Recheck = 10 * time.Millisecond
	t.Cleanup(func() { Recheck = old })

	var calls atomic.Int64
	state := func(context.Context) (runtime.State, error) {
		if calls.Add(1) < 3 {
			return runtime.State{Status: runtime.StatusRunning}, nil
		}
		return runtime.State{Status: runtime.StatusExited, ExitCode: -1}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := Wait(ctx, t.TempDir(), state)
	if err != nil || st.Status != runtime.StatusExited || st.ExitCode != -1 {
		t.Fatalf("Wait = %+v, %v; want exited with code -1", st, err)
	}
}

// TestWaitUnknownMachine: a directory that does not exist is the state
// function's error (not found), not a watch error.
func TestWaitUnknownMachine(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	state := func(context.Context) (runtime.State, error) {
		return runtime.State{}, runtime.ErrNotFound
	}
	if _, err := Wait(context.Background(), missing, state); !errors.Is(err, runtime.ErrNotFound) {
		t.Fatalf("Wait on a missing machine = %v; want ErrNotFound", err)
	}
}

// TestWaitCancel: Wait on a running machine returns when ctx is done.
func TestWaitCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	dir := t.TempDir()
	done := make(chan error, 1)
	go func() {
		_, err := Wait(ctx, dir, stateFromDir(dir, &calls))
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait after cancel = %v; want context.Canceled", err)
	}
}
