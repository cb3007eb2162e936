package image

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxSymlinks bounds the symlinks followed in one path, as the kernel does.
const maxSymlinks = 40

// openDir opens the directory at rel (clean, relative to the root) and
// returns its fd, which the caller closes. Symlinks on the way are resolved
// as if the root were "/": an absolute target starts again at the root and
// ".." stops at it, so the walk never leaves the tree. With create, missing
// directories are made, as tar extractors do for entries whose parents the
// layer does not list.
func (a *applier) openDir(rel string, create bool) (int, error) {
	var stack []int    // fds from the root (exclusive) down to the current directory
	var names []string // their names: the path resolved so far
	closeAll := func() {
		for _, fd := range stack {
			unix.Close(fd)
		}
		stack, names = stack[:0], names[:0]
	}
	cur := func() int {
		if len(stack) == 0 {
			return a.root
		}
		return stack[len(stack)-1]
	}
	queue := strings.Split(rel, "/")
	links := 0
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 0 {
				unix.Close(stack[len(stack)-1])
				stack, names = stack[:len(stack)-1], names[:len(names)-1]
			}
			continue
		}
		if err := a.budget.checkDepth(len(stack)+1, path.Join(append(names, c)...)); err != nil {
			closeAll()
			return -1, err
		}
		fd, err := unix.Openat(cur(), c, openDirFlags, 0)
		if errors.Is(err, unix.ENOENT) && create && a.layer {
			// Only the layers below may have it: go through their
			// symlink, or copy their directory.
			if e, ok := a.lowerLookup(path.Join(append(names, c)...)); ok && e.st.Mode&unix.S_IFMT == unix.S_IFLNK {
				if links++; links > maxSymlinks {
					closeAll()
					return -1, fmt.Errorf("%s: too many levels of symbolic links", rel)
				}
				if strings.HasPrefix(e.target, "/") {
					closeAll()
				}
				queue = append(strings.Split(e.target, "/"), queue...)
				continue
			} else if ok && e.st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if fd, err = a.mkdirOpen(cur(), c); err == nil {
					if err = a.copyDirAttrs(fd, &e.st); err != nil {
						unix.Close(fd)
					}
				}
			} else {
				fd, err = a.mkdirOpen(cur(), c)
			}
		} else if errors.Is(err, unix.ENOENT) && create {
			fd, err = a.mkdirOpen(cur(), c)
		}
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			target, lerr := readlinkAt(cur(), c)
			if lerr == nil {
				if links++; links > maxSymlinks {
					closeAll()
					return -1, fmt.Errorf("%s: too many levels of symbolic links", rel)
				}
				if strings.HasPrefix(target, "/") {
					closeAll()
				}
				queue = append(strings.Split(target, "/"), queue...)
				continue
			}
		}
		if err != nil {
			closeAll()
			return -1, fmt.Errorf("%s: %w", rel, err)
		}
		stack, names = append(stack, fd), append(names, c)
	}
	if len(stack) == 0 {
		fd, err := unix.Dup(a.root)
		if err != nil {
			return -1, fmt.Errorf("dup: %w", err)
		}
		return fd, nil
	}
	top := stack[len(stack)-1]
	stack = stack[:len(stack)-1]
	closeAll()
	return top, nil
}

// mkdirOpen makes a directory the layer did not list and opens it.
func (a *applier) mkdirOpen(dirfd int, name string) (int, error) {
	// It counts as an entry: else a layer of a/1/2/…/f, b/1/2/…/f, …
	// makes many times the inodes it has entries.
	if err := a.budget.addEntries(1); err != nil {
		return -1, err
	}
	if err := unix.Mkdirat(dirfd, name, 0o755); err != nil {
		return -1, err
	}
	fd, err := unix.Openat(dirfd, name, openDirFlags, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Fchmod(fd, 0o755); err != nil { // whatever the umask
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// openParent opens the directory that holds name and returns it with
// name's last component, on which the caller acts without following it.
func (a *applier) openParent(name string, create bool) (int, string, error) {
	fd, err := a.openDir(path.Dir(name), create)
	return fd, path.Base(name), err
}

// readlinkAt returns the target of the symlink name in dirfd, or an error
// if name is not a symlink.
func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// removeAt removes name in dirfd and, for a directory, everything under
// it, never following a symlink. A missing name is not an error.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	fd, oerr := unix.Openat(dirfd, name, openDirFlags, 0)
	if oerr != nil {
		return fmt.Errorf("remove %s: %w", name, err) // not a directory: report the unlink error
	}
	names, err := readDirNames(fd)
	for _, n := range names {
		if err != nil {
			break
		}
		err = removeAt(fd, n)
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove directory %s: %w", name, err)
	}
	return nil
}

// readDirNames lists a directory fd freshly opened by the caller.
func readDirNames(fd int) ([]string, error) {
	buf := make([]byte, 16<<10)
	var names []string
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read directory: %w", err)
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
