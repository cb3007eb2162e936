package guestinit

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// File is one of the machine's config.files, written into its root before
// the app starts, owned by root, as the runc driver writes them.
type File struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"`
}

// writeFiles writes files into root (the machine's disk), before its
// volumes are mounted, as runc writes them into the rootfs before its bind
// mounts. Paths resolve as inside the machine (RESOLVE_IN_ROOT: the
// image's symlinks are followed with root as "/"); a file already there,
// or a symlink, is replaced, never written through. Missing directories
// are made 0755.
func writeFiles(root string, files []File) error {
	if len(files) == 0 {
		return nil
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("files: open %s: %w", root, err)
	}
	defer unix.Close(rfd)
	for _, f := range files {
		if err := writeFile(rfd, f); err != nil {
			return fmt.Errorf("file %s: %w", f.Path, err)
		}
	}
	return nil
}

func writeFile(rfd int, f File) error {
	dir, name := path.Split(path.Clean("/" + f.Path))
	if name == "" {
		return errors.New("not a file path")
	}
	dfd, err := mkdirInRoot(rfd, dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := unix.Unlinkat(dfd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	mode := f.Mode & 0o7777
	if mode == 0 {
		mode = 0o644
	}
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for b := f.Data; len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	if err := unix.Fchmod(fd, mode); err != nil { // the umask masked Openat's
		return err
	}
	return unix.Fchown(fd, 0, 0)
}

// mkdirInRoot opens guest directory dir under rfd as the machine would
// resolve it, making what is missing (also the target of a symlink that
// leads nowhere yet), and returns its descriptor.
func mkdirInRoot(rfd int, dir string) (int, error) { return mkdirHops(rfd, dir, 0) }

func mkdirHops(rfd int, dir string, hops int) (int, error) {
	if hops > 40 {
		return -1, fmt.Errorf("%s: %w", dir, unix.ELOOP)
	}
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	cur := "/"
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		next := path.Join(cur, c)
		fd, err := unix.Openat2(rfd, next, how)
		if err == nil {
			unix.Close(fd)
			cur = next
			continue
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("%s: %w", next, err)
		}
		pfd, err := unix.Openat2(rfd, cur, how)
		if err != nil {
			return -1, err
		}
		err = unix.Mkdirat(pfd, c, 0o755)
		if errors.Is(err, unix.EEXIST) { // a symlink to what is not there yet
			buf := make([]byte, unix.PathMax)
			if n, lerr := unix.Readlinkat(pfd, c, buf); lerr == nil {
				target := string(buf[:n])
				if !path.IsAbs(target) {
					target = path.Join(cur, target)
				}
				var tfd int
				if tfd, err = mkdirHops(rfd, target, hops+1); err == nil {
					unix.Close(tfd)
				}
			}
		}
		unix.Close(pfd)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("make %s: %w", next, err)
		}
		cur = next
	}
	return unix.Openat2(rfd, cur, how)
}
