package guestinit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// outputGrace bounds how long the init keeps reading the app's output
// after it exited: a daemon it left behind may hold the pipes open.
const outputGrace = 500 * time.Millisecond

// app is the machine's process, the init's one child it answers for.
type app struct {
	host *Writer

	mu      sync.Mutex
	pid     int // 0 until started
	pending []syscall.Signal
}

func newApp(host *Writer) *app { return &app{host: host} }

// signal sends sig to the app, or once it starts.
func (a *app) signal(sig int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pid == 0 {
		a.pending = append(a.pending, syscall.Signal(sig))
		return
	}
	syscall.Kill(a.pid, syscall.Signal(sig))
}

// run starts the app in root and returns its exit code once it is gone,
// reaping every other process that ends up orphaned to the init meanwhile.
func (a *app) run(cfg Config, root string) int {
	if len(cfg.Args) == 0 {
		a.stderr("no command to run")
		return ExitNotFound
	}
	cwd := cfg.Cwd
	if cwd == "" {
		cwd = "/"
	}
	bin, code := lookPath(root, cwd, cfg.Args[0], cfg.Env)
	if code != 0 {
		a.stderr(fmt.Sprintf("%s: executable file not found in the image (PATH of the machine) or not executable", cfg.Args[0]))
		return code
	}
	raiseNofile()
	devnull, err := os.Open("/dev/null")
	if err != nil {
		a.stderr(err.Error())
		return ExitSetupFailed
	}
	defer devnull.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		a.stderr(err.Error())
		return ExitSetupFailed
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		a.stderr(err.Error())
		return ExitSetupFailed
	}
	var copiers sync.WaitGroup
	copiers.Add(2)
	go a.copy(&copiers, outR, FrameStdout)
	go a.copy(&copiers, errR, FrameStderr)

	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	a.mu.Lock()
	pid, err := syscall.ForkExec(bin, cfg.Args, &syscall.ProcAttr{
		Dir:   cwd,
		Env:   cfg.Env,
		Files: []uintptr{devnull.Fd(), outW.Fd(), errW.Fd()},
		Sys: &syscall.SysProcAttr{
			Chroot:     root,
			Credential: &syscall.Credential{Uid: cfg.UID, Gid: cfg.GID, Groups: cfg.Groups},
			Setsid:     true,
		},
	})
	outW.Close()
	errW.Close()
	if err != nil {
		a.mu.Unlock()
		a.stderr(fmt.Sprintf("start %s: %v", cfg.Args[0], err))
		copiers.Wait()
		if errors.Is(err, syscall.ENOENT) {
			return ExitNotFound
		}
		return ExitNotExecutable
	}
	a.pid = pid
	for _, s := range a.pending {
		syscall.Kill(pid, s)
	}
	a.pending = nil
	a.mu.Unlock()
	a.host.Send(FrameStarted, []byte(fmt.Sprint(pid)))

	code = reapUntil(pid, sigchld)
	done := make(chan struct{})
	go func() { copiers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(outputGrace):
		outR.Close()
		errR.Close()
	}
	return code
}

// copy forwards one of the app's output pipes to the host.
func (a *app) copy(wg *sync.WaitGroup, r io.Reader, typ byte) {
	defer wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if a.host.Send(typ, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (a *app) stderr(msg string) {
	a.host.Send(FrameStderr, []byte("perch-init: "+msg+"\n"))
}

// reapUntil reaps children as they exit until pid has, and returns its
// exit code: 128+n when a signal n killed it, as a shell reports it.
func reapUntil(pid int, sigchld <-chan os.Signal) int {
	for {
		for {
			var ws unix.WaitStatus
			got, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err != nil || got <= 0 {
				break
			}
			if got == pid {
				if ws.Signaled() {
					return 128 + int(ws.Signal())
				}
				return ws.ExitStatus()
			}
		}
		<-sigchld
	}
}

// lookPath finds the program as the app's root sees it: a name without a
// slash is searched in the app's PATH, a relative one is taken from cwd.
// It returns the path inside root, or an exit code saying why there is
// none.
func lookPath(root, cwd, name string, env []string) (string, int) {
	check := func(p string) int {
		fi, err := statIn(root, p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return ExitNotFound
		case err != nil || fi.IsDir() || fi.Mode()&0o111 == 0:
			return ExitNotExecutable
		}
		return 0
	}
	if strings.Contains(name, "/") {
		if !path.IsAbs(name) {
			name = path.Join(cwd, name)
		}
		return name, check(name)
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	code := ExitNotFound
	for _, dir := range strings.Split(pathEnv, ":") {
		if !path.IsAbs(dir) {
			continue
		}
		p := path.Join(dir, name)
		c := check(p)
		if c == 0 {
			return p, 0
		}
		if c == ExitNotExecutable {
			code = c
		}
	}
	return "", code
}

// statIn stats p as a process chrooted to root would see it: symbolic
// links are followed, absolute ones from root. (The VM is the boundary,
// so this is about finding the file, not about containing the image.)
func statIn(root, p string) (fs.FileInfo, error) {
	resolved := "" // inside root; "" is root itself
	rest := strings.Split(p, "/")
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir("/" + resolved)[1:]
			continue
		}
		next := path.Join(resolved, c)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return nil, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if hops++; hops > 40 {
			return nil, syscall.ELOOP
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return nil, err
		}
		if path.IsAbs(target) {
			resolved = ""
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return os.Stat(filepath.Join(root, resolved))
}

// raiseNofile lets the app open as many files as the kernel allows, as a
// container would under a default agent; children inherit it.
func raiseNofile() {
	for _, n := range []uint64{1 << 20, 1 << 16} {
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}) == nil {
			return
		}
	}
}
