package machinedir

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/perchhq/perch/internal/runtime"
)

// Recheck is how often Wait looks at a machine when nothing in its
// directory changed and its shim lives: a safety net only. Every exit is
// an inotify event in the directory (the shim's exit record) or the end of
// the shim's process (a pidfd, for a shim that died without writing its
// record: kill -9), and either wakes Wait at once.
var Recheck = 10 * time.Second

// ShimRecord is the file in a machine directory where both drivers keep
// their shim's pid (a Shim).
const ShimRecord = "shim.json"

// watchMask is what wakes Wait: the shim's exit record arriving (written to
// a temporary file and renamed), a pid file closed after writing, and the
// directory going away.
const watchMask = unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE | unix.IN_DELETE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// Wait returns when the machine in dir has exited (or been suspended), state fails, or ctx is
// done; every driver's runtime.Driver.Wait. It asks state again on each
// change to dir and every Recheck, so an idle machine costs one look a
// second, not fifty.
func Wait(ctx context.Context, dir string, state func(context.Context) (runtime.State, error)) (runtime.State, error) {
	stopShim := func() {}
	changed, stop, err := WatchDir(dir, watchMask)
	if err != nil {
		// An unknown or malformed machine is state's to report.
		if st, serr := state(ctx); serr != nil {
			return st, serr
		}
		return runtime.State{}, err
	}
	defer stop()
	timer := time.NewTimer(Recheck)
	defer timer.Stop()
	var shimGone <-chan struct{}
	shimPid := 0
	defer func() {
		if shimPid != 0 {
			stopShim()
		}
	}()
	for {
		st, err := state(ctx)
		if err != nil || st.Status == runtime.StatusExited || st.Status == runtime.StatusSuspended {
			return st, err
		}
		// Follow the shim's process once it has one (and again if it
		// changed: a restart).
		var sh Shim
		if ReadJSON(filepath.Join(dir, ShimRecord), &sh) == nil && sh.Pid > 0 && sh.Pid != shimPid {
			if shimPid != 0 {
				stopShim()
			}
			shimPid = sh.Pid
			shimGone, stopShim = watchPid(sh.Pid)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-changed:
		case <-shimGone:
			shimGone = nil // closed: look once, then wait for the rest
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(Recheck)
	}
}

// WatchDir starts an inotify watch for mask (unix.IN_*) on dir. changed
// receives (without blocking the reader: it holds at most one pending
// wake-up) whenever an event arrives; stop ends the watch. A dir that does
// not exist is runtime.ErrNotFound. changed is closed once stop is called.
func WatchDir(dir string, mask uint32) (changed <-chan struct{}, stop func(), err error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.ENOENT) {
			return nil, nil, fmt.Errorf("watch %s: %w", dir, runtime.ErrNotFound)
		}
		return nil, nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	// A non-blocking descriptor in an os.File goes through Go's poller, so
	// Read parks the goroutine and Close wakes it.
	f := os.NewFile(uintptr(fd), "inotify:"+dir)
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		buf := make([]byte, 4096)
		for {
			if _, err := f.Read(buf); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close(); <-done }, nil
}

// watchPid returns a channel closed when process pid ends (a pidfd that
// Go's poller waits on: no thread, no timer) and a func that stops
// watching. A pid that cannot be opened (gone already) closes it at once.
func watchPid(pid int) (<-chan struct{}, func()) {
	gone := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		close(gone)
		return gone, func() {}
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		close(gone)
		return gone, func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		first := true
		// A pidfd turns readable when its process ends: the poller calls
		// back a second time then, or Read fails when f is closed.
		err := rc.Read(func(uintptr) bool {
			if first {
				first = false
				return false
			}
			return true
		})
		if err == nil {
			close(gone)
		}
	}()
	return gone, func() { f.Close(); <-done }
}
