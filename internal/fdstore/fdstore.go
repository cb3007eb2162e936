// Package fdstore keeps a process's listening sockets open across its
// crash and restart, through its supervisor's file descriptor store: the
// protocol of systemd's FileDescriptorStoreMax= (sd_notify "FDSTORE=1"
// with the descriptor attached, "FDSTOREREMOVE=1"; the stored ones handed
// back at the next start as LISTEN_FDS and LISTEN_FDNAMES). While the
// process is dead, the kernel goes on queueing connections on the stored
// socket instead of refusing them; the restarted process accepts them.
//
// Client is the process's side (the agent's edge); Store is a supervisor's
// (perch dev's, for each agent it runs). Names may not hold ':' (systemd's
// rule), so addresses are written with '_'.
package fdstore

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Environment variables of the protocol.
const (
	EnvNotifySocket = "NOTIFY_SOCKET"
	EnvListenFDs    = "LISTEN_FDS"
	EnvListenNames  = "LISTEN_FDNAMES"
	EnvListenPID    = "LISTEN_PID"
)

// firstFD is the first descriptor a service manager passes (SD_LISTEN_FDS_START).
const firstFD = 3

// Client opens listeners, taking each from the descriptors the supervisor
// passed at start when it has one of that name, and stores each new one
// with the supervisor. Without a supervisor (no $NOTIFY_SOCKET and nothing
// passed) it is plain net.Listen.
type Client struct {
	notify string
	log    *slog.Logger

	mu        sync.Mutex
	inherited map[string]*os.File // passed at start and not yet taken
}

// FromEnv reads what the supervisor passed (descriptors and where to
// store new ones) and clears it from the environment, so that the
// processes this one starts see none of it. Passed descriptors are made
// close-on-exec at once. Call it early, once.
func FromEnv(log *slog.Logger) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{notify: os.Getenv(EnvNotifySocket), log: log, inherited: map[string]*os.File{}}
	n, _ := strconv.Atoi(os.Getenv(EnvListenFDs))
	names := strings.Split(os.Getenv(EnvListenNames), ":")
	// systemd sets LISTEN_PID to the service's pid; a supervisor that
	// cannot know it in advance (perch dev, through os/exec) leaves it out.
	if pid := os.Getenv(EnvListenPID); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		n = 0
	}
	for i := range n {
		fd := firstFD + i
		syscall.CloseOnExec(fd)
		name := ""
		if i < len(names) {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		if name == "" || c.inherited[name] != nil {
			f.Close()
			continue
		}
		c.inherited[name] = f
	}
	for _, v := range []string{EnvNotifySocket, EnvListenFDs, EnvListenNames, EnvListenPID} {
		os.Unsetenv(v)
	}
	return c
}

// Name is the store's name of a listener: "<network>-<addr>", ':' as '_'.
func Name(network, addr string) string {
	return strings.ReplaceAll(network+"-"+addr, ":", "_")
}

// Listen gives a listener on addr: the one the supervisor kept, if it has
// one there, else a new one, which it then asks the supervisor to keep.
func (c *Client) Listen(network, addr string) (net.Listener, error) {
	name := Name(network, addr)
	c.mu.Lock()
	f := c.inherited[name]
	delete(c.inherited, name)
	c.mu.Unlock()
	if f != nil {
		ln, err := net.FileListener(f) // a duplicate, close-on-exec
		f.Close()
		if err == nil && ln.Addr().String() == addr {
			c.log.Info("listening on a socket kept across the restart", "addr", addr)
			return ln, nil
		}
		if err == nil {
			ln.Close()
			err = fmt.Errorf("it listens on %s", ln.Addr())
		}
		c.log.Warn("a kept socket is not usable; opening a new one", "name", name, "err", err)
		c.remove(name)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	if c.notify != "" {
		if err := c.store(Name(network, ln.Addr().String()), ln); err != nil {
			c.log.Warn("the supervisor does not keep the listener: a restart will refuse connections until it listens again", "addr", addr, "err", err)
		}
	}
	return ln, nil
}

// Release tells the supervisor to forget the listener on addr (closed
// for good: no app serves that port any more).
func (c *Client) Release(network, addr string) { c.remove(Name(network, addr)) }

// ReleaseUnused closes the passed descriptors no Listen took, and tells
// the supervisor to forget them: ports given up while this process was
// not running.
func (c *Client) ReleaseUnused() {
	c.mu.Lock()
	left := c.inherited
	c.inherited = map[string]*os.File{}
	c.mu.Unlock()
	for name, f := range left {
		f.Close()
		c.remove(name)
	}
}

func (c *Client) store(name string, ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("a %T has no descriptor", ln)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	// Not ln's File and its Fd: that puts the socket, which the copy
	// shares, in blocking mode, and Close would no longer stop Accept.
	var sendErr error
	if err := raw.Control(func(fd uintptr) {
		sendErr = c.send("FDSTORE=1\nFDNAME="+name+"\n", int(fd))
	}); err != nil {
		return err
	}
	return sendErr
}

func (c *Client) remove(name string) {
	if c.notify == "" {
		return
	}
	if err := c.send("FDSTOREREMOVE=1\nFDNAME="+name+"\n", -1); err != nil {
		c.log.Warn("the supervisor may keep a closed port's socket", "name", name, "err", err)
	}
}

// send is sd_notify: one datagram to $NOTIFY_SOCKET ('@' for the abstract
// namespace), with fd attached if it is not -1.
func (c *Client) send(msg string, fd int) error {
	addr := c.notify
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	sock, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	defer syscall.Close(sock)
	var oob []byte
	if fd >= 0 {
		oob = syscall.UnixRights(fd)
	}
	if err := syscall.Sendmsg(sock, []byte(msg), oob, &syscall.SockaddrUnix{Name: addr}, 0); err != nil {
		return fmt.Errorf("notify socket %s: %w", c.notify, err)
	}
	return nil
}

// Store is a supervisor's file descriptor store for one process: it
// receives the process's FDSTORE and FDSTOREREMOVE messages on a unix
// datagram socket and hands what it keeps to each start of the process.
type Store struct {
	path string
	conn *net.UnixConn
	log  *slog.Logger
	done chan struct{}

	mu sync.Mutex
	// fds by name: raw descriptors, never an os.File, whose Fd would put
	// the socket (shared with the process) in blocking mode.
	fds map[string]int
}

// maxFDs bounds what one process may store (systemd's
// FileDescriptorStoreMax= for the same).
const maxFDs = 256

// NewStore listens on a datagram socket at path (removed first if left
// over) for the messages of the process it supervises.
func NewStore(path string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	_ = os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("fd store: %w", err)
	}
	s := &Store{path: path, conn: conn, log: log, done: make(chan struct{}), fds: map[string]int{}}
	go s.serve()
	return s, nil
}

// Env is what to add to the process's environment and ExtraFiles (fds
// 3, 4, ...) at its start: the store's socket and the kept descriptors.
// The files are duplicates the caller closes once the process started.
func (s *Store) Env() (env []string, files []*os.File) {
	s.mu.Lock()
	defer s.mu.Unlock()
	env = []string{EnvNotifySocket + "=" + s.path}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range s.fds {
			if !yield(n) {
				return
			}
		}
	})
	var kept []string
	for _, n := range names {
		fd, err := dupCloexec(s.fds[n])
		if err != nil {
			s.log.Warn("fd store: cannot pass a kept descriptor", "name", n, "err", err)
			continue
		}
		files = append(files, os.NewFile(uintptr(fd), n))
		kept = append(kept, n)
	}
	if len(files) > 0 {
		env = append(env, EnvListenFDs+"="+strconv.Itoa(len(files)), EnvListenNames+"="+strings.Join(kept, ":"))
	}
	return env, files
}

// Names is what the store keeps, sorted.
func (s *Store) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.fds))
	for n := range s.fds {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Close stops receiving and closes every kept descriptor (the process is
// stopped for good: its ports now refuse connections).
func (s *Store) Close() error {
	err := s.conn.Close()
	<-s.done
	_ = os.Remove(s.path)
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, fd := range s.fds {
		syscall.Close(fd)
		delete(s.fds, n)
	}
	return err
}

func (s *Store) serve() {
	defer close(s.done)
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("fd store stopped", "err", err)
			}
			return
		}
		fds := receivedFDs(oob[:oobn])
		s.handle(string(buf[:n]), fds)
	}
}

func receivedFDs(oob []byte) []int {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for _, m := range msgs {
		if got, err := syscall.ParseUnixRights(&m); err == nil {
			fds = append(fds, got...)
		}
	}
	return fds
}

// handle applies one message; descriptors it does not keep are closed.
func (s *Store) handle(msg string, fds []int) {
	vars := map[string]string{}
	for line := range strings.SplitSeq(msg, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	name := vars["FDNAME"]
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case vars["FDSTORE"] == "1" && len(fds) == 1 && name != "" && !strings.Contains(name, ":"):
		if old, ok := s.fds[name]; ok {
			syscall.Close(old)
		} else if len(s.fds) >= maxFDs {
			s.log.Warn("fd store full; descriptor not kept", "name", name, "max", maxFDs)
			syscall.Close(fds[0])
			return
		}
		syscall.CloseOnExec(fds[0])
		s.fds[name] = fds[0]
		return
	case vars["FDSTOREREMOVE"] == "1" && name != "":
		if fd, ok := s.fds[name]; ok {
			syscall.Close(fd)
			delete(s.fds, name)
		}
	default:
		if len(fds) > 0 || vars["FDSTORE"] != "" {
			s.log.Warn("fd store: message not understood", "msg", msg, "fds", len(fds))
		}
	}
	for _, fd := range fds {
		syscall.Close(fd)
	}
}

// dupCloexec duplicates fd, close-on-exec (os/exec gives ExtraFiles to the
// child on their own numbers).
func dupCloexec(fd int) (int, error) {
	return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
}
