package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Linux syscall numbers of amd64 and arm64 not in package syscall's
// portable set.
var keyctlNr, addKeyNr = sysnums()

// sandbox prints what the machine may do: its uid and gid, and the errno
// of syscalls a sandbox should refuse.
func sandbox() {
	fmt.Printf("uid %d\n", os.Getuid())
	fmt.Printf("gid %d\n", os.Getgid())
	errno := func(err error) string {
		var e syscall.Errno
		if err == nil {
			return "allowed"
		}
		if errors.As(err, &e) {
			return errnoName(e)
		}
		return err.Error()
	}
	_, _, e := syscall.RawSyscall(keyctlNr, 0 /* KEYCTL_GET_KEYRING_ID */, ^uintptr(2) /* session */, 0)
	fmt.Printf("keyctl %s\n", errno(errOrNil(e)))
	desc, typ := []byte("perch\x00"), []byte("user\x00")
	_, _, e = syscall.RawSyscall6(addKeyNr, uintptr(unsafe.Pointer(&typ[0])), uintptr(unsafe.Pointer(&desc[0])), 0, 0, ^uintptr(3), 0)
	fmt.Printf("add_key %s\n", errno(errOrNil(e)))
	os.MkdirAll("/tmp/mnt", 0o755)
	fmt.Printf("mount %s\n", errno(syscall.Mount("tmpfs", "/tmp/mnt", "tmpfs", 0, "")))
	fmt.Printf("umount2 %s\n", errno(syscall.Unmount("/proc", syscall.MNT_DETACH)))
	fmt.Printf("unshare-user %s\n", errno(syscall.Unshare(syscall.CLONE_NEWUSER)))
	fmt.Printf("unshare-net %s\n", errno(syscall.Unshare(syscall.CLONE_NEWNET)))
	// A port below 1024 binds: root in the machine may.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: 80})
		syscall.Close(fd)
	}
	fmt.Printf("bind80 %s\n", errno(err))
	// The root directory is root's, as the image has it.
	var st syscall.Stat_t
	if err := syscall.Stat("/app", &st); err == nil {
		fmt.Printf("app-owner %d:%d\n", st.Uid, st.Gid)
	}
	if err := syscall.Stat("/run/postgresql", &st); err == nil {
		fmt.Printf("run-postgresql-owner %d:%d\n", st.Uid, st.Gid)
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "NoNewPrivs:") || strings.HasPrefix(l, "Seccomp:") {
				fmt.Println(strings.Join(strings.Fields(l), " "))
			}
		}
	}
}

func errOrNil(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ENOSYS:
		return "ENOSYS"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.ENOKEY:
		return "ENOKEY"
	}
	return e.Error()
}

// forkbomb forks (a bare clone, each child one process sleeping in a
// raw syscall) until fork fails, reports how many it made, holds them for
// hold and exits; the kernel ends the children with the machine's init.
func forkbomb(hold time.Duration) {
	ts := syscall.Timespec{Sec: 3600}
	n := 0
	var last error
	for n < 1000000 {
		pid, _, e := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
		if e != 0 {
			last = e
			break
		}
		if pid == 0 {
			for {
				syscall.RawSyscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
			}
		}
		n++
	}
	fmt.Printf("forked %d failed %v\n", n, last)
	time.Sleep(hold)
}

// alloc touches mb MiB, printing each 16 MiB, then sleeps.
func alloc(mb int) {
	var keep [][]byte
	for i := 0; i < mb; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		keep = append(keep, b)
		if i%16 == 0 {
			fmt.Printf("allocated %d MiB\n", i)
		}
	}
	fmt.Println("allocated all")
	time.Sleep(time.Hour)
	_ = keep
}

// fillUp writes MiB blocks to path until a write fails.
func fillUp(path string) {
	f, err := os.Create(path)
	if err != nil {
		fmt.Printf("wrote 0 MiB: %v\n", err)
		return
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	n := 0
	for {
		if _, err := f.Write(buf); err != nil {
			fmt.Printf("wrote %d MiB: %v\n", n, err)
			return
		}
		n++
	}
}
