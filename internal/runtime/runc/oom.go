package runc

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// oomWatch tells whether the kernel's OOM killer acted in a machine's
// memory cgroup during a run. runc removes the cgroup, and its counters,
// as soon as the container is gone, so the shim registers for the
// cgroup's OOM notifications (cgroup v1 memory.oom_control through
// cgroup.event_control; on cgroup v2, memory.events through inotify) while
// the container runs. On v1 a notification while the cgroup's files still
// read is the OOM killer's (it comes before the kill, when the counters
// may not show it yet); the one at the cgroup's removal finds them gone.
type oomWatch struct {
	killed atomic.Bool
	done   chan struct{}
}

// memoryCgroupDir is the directory of cgroup path (as in the spec's
// cgroupsPath) in the memory controller's hierarchy, and whether that is
// cgroup v2.
func memoryCgroupDir(path string) (dir string, v2 bool) {
	if fi, err := os.Stat("/sys/fs/cgroup/memory"); err == nil && fi.IsDir() {
		return filepath.Join("/sys/fs/cgroup/memory", path), false
	}
	return filepath.Join("/sys/fs/cgroup", path), true
}

// watchOOM starts watching the memory cgroup at dir, which must exist.
func watchOOM(dir string, v2 bool) (*oomWatch, error) {
	w := &oomWatch{done: make(chan struct{})}
	if v2 {
		return w, w.watchV2(dir)
	}
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		ctl.Close()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	reg := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		ctl.Close()
		unix.Close(efd)
		return nil, err
	}
	go func() {
		defer close(w.done)
		defer ctl.Close()
		defer unix.Close(efd)
		buf := make([]byte, 8)
		for {
			// Woken when the cgroup runs out of memory (as the OOM killer
			// starts: its counters may not show it yet) and when the
			// cgroup is removed, when its files no longer read.
			if _, err := unix.Read(efd, buf); err != nil {
				return
			}
			b := make([]byte, 256)
			if n, err := ctl.ReadAt(b, 0); n == 0 && err != nil {
				return
			}
			w.killed.Store(true)
		}
	}()
	return w, nil
}

// watchV2 watches memory.events (oom_kill) through inotify.
func (w *oomWatch) watchV2(dir string) error {
	events := filepath.Join(dir, "memory.events")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch %s: %w", events, err)
	}
	go func() {
		defer close(w.done)
		defer unix.Close(fd)
		buf := make([]byte, 4096)
		for {
			if b, err := os.ReadFile(events); err != nil {
				return
			} else if oomV2(b) {
				w.killed.Store(true)
				return
			}
			if _, err := unix.Read(fd, buf); err != nil {
				return
			}
		}
	}()
	return nil
}

func oomV2(b []byte) bool {
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, _ := strings.Cut(l, " "); k == "oom_kill" && v != "0" {
			return true
		}
	}
	return false
}

// Killed reports whether the OOM killer acted during the run.
func (w *oomWatch) Killed() bool {
	if w == nil {
		return false
	}
	return w.killed.Load()
}
