package runc

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/perchhq/perch/internal/runtime"
)

// writeFiles writes the machine's config.files into its mounted root
// (the overlay's upper layer, or the copy) before it first starts. Paths
// resolve as inside the machine: the image's symlinks are followed with
// the root as "/" (/etc/ssl -> /usr/lib/ssl stays in the root), so no
// symlink can send a write to the host.
//
// Files and the directories made for them belong to the machine's root,
// host uid root (its user namespace's root).
func writeFiles(rootfs string, files []runtime.File, root int) error {
	for _, f := range files {
		if err := writeFile(rootfs, f, root); err != nil {
			return fmt.Errorf("write file %s: %w", f.Path, err)
		}
	}
	return nil
}

func writeFile(rootfs string, f runtime.File, root int) error {
	clean := path.Clean("/" + f.Path)
	dir, name := path.Split(clean)
	if name == "" {
		return errors.New("not a file path")
	}
	hostDir, err := mkdirInRoot(rootfs, dir, root)
	if err != nil {
		return err
	}
	mode := f.Mode
	if mode == 0 {
		mode = 0o644
	}
	p := filepath.Join(hostDir, name)
	// Whatever the image has there (a file, a symlink) is replaced, never
	// written through.
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	fd, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
	if err != nil {
		return err
	}
	if _, err := fd.Write(f.Data); err != nil {
		fd.Close()
		return err
	}
	if err := fd.Chmod(mode); err != nil { // the umask masked OpenFile's
		fd.Close()
		return err
	}
	if err := fd.Chown(root, root); err != nil {
		fd.Close()
		return err
	}
	return fd.Close()
}

// mkdirInRoot resolves guest directory dir inside rootfs as the machine
// would see it, creating what is missing (0755), and returns its host
// path.
func mkdirInRoot(rootfs, dir string, root int) (string, error) {
	todo := strings.Split(strings.Trim(dir, "/"), "/")
	var cur []string // resolved components below the root
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		host := filepath.Join(rootfs, filepath.Join(cur...), c)
		fi, err := os.Lstat(host)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(host, 0o755); err != nil {
				return "", err
			}
			if err := os.Lchown(host, root, root); err != nil {
				return "", err
			}
			cur = append(cur, c)
		case err != nil:
			return "", err
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > 40 {
				return "", fmt.Errorf("too many symlinks under %s", dir)
			}
			target, err := os.Readlink(host)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				cur = nil
			}
			todo = append(strings.Split(target, "/"), todo...)
		case fi.IsDir():
			cur = append(cur, c)
		default:
			return "", fmt.Errorf("/%s is not a directory in the image", path.Join(append(cur, c)...))
		}
	}
	return filepath.Join(rootfs, filepath.Join(cur...)), nil
}
