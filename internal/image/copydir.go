package image

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrOutsideImage is a path whose symlinks lead out of the image's root.
var ErrOutsideImage = errors.New("outside the image")

// CopyDir copies the directory dir of img's root filesystem (as the
// machine sees it: every layer merged) into dst, which must not exist:
// directories and regular files, with their modification times; a symlink
// is followed inside the image to the regular file it names, and left out
// if it names a directory or leads out of the image. dir itself is
// resolved inside the image; a symlink on its way that climbs above the
// image's root, a missing dir or a file is an error that says so. It is
// what the edges serve as [[statics]].
func (s *Store) CopyDir(img *Image, dir, dst string) error {
	s.gc.RLock() // GC removes no layer while it is read
	defer s.gc.RUnlock()
	root := img.Rootfs
	switch {
	case len(img.Layers) == 1:
		root = img.Layers[0] // nothing below it to hide
	case len(img.Layers) > 1:
		m, unmount, err := MountLayers(s.tmpDir(), img.Layers)
		if err != nil {
			return err
		}
		defer unmount()
		root = m
	}
	rel, err := resolveInImage(root, dir)
	if err != nil {
		return err
	}
	src := filepath.Join(root, rel)
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("%s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is a file in the image, not a directory", dir)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dst), ".copy-")
	if err != nil {
		return fmt.Errorf("copy %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name, _ := filepath.Rel(src, p)
		out := filepath.Join(tmp, name)
		switch {
		case d.IsDir():
			if name == "." {
				return nil
			}
			return os.Mkdir(out, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := resolveInImage(root, path.Join(rel, filepath.ToSlash(name)))
			if err != nil {
				return nil // dangling, or out of the image: nothing to serve
			}
			if fi, err := os.Stat(filepath.Join(root, target)); err == nil && fi.Mode().IsRegular() {
				return copyFile(filepath.Join(root, target), out, fi)
			}
			return nil
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return copyFile(p, out, fi)
		}
		return nil // devices, fifos, sockets: nothing to serve
	})
	if err != nil {
		return fmt.Errorf("copy %s out of the image: %w", dir, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("copy %s: %w", dir, err)
	}
	return nil
}

func copyFile(src, dst string, fi fs.FileInfo) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

// resolveInImage resolves p inside the image at root as the machine would,
// returning it relative to root with every symlink followed: an absolute
// symlink starts again at the image's root; a relative one that climbs
// above the root is ErrOutsideImage (the kernel would stop it at "/",
// but a static that points there is a mistake to report, not to serve).
func resolveInImage(root, p string) (string, error) {
	parts := strings.Split(p, "/")
	cur := ""
	hops := 0
	for len(parts) > 0 {
		part := parts[0]
		parts = parts[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if cur == "" {
				return "", fmt.Errorf("\"..\" in %s climbs above the image's root: %w", p, ErrOutsideImage)
			}
			cur = path.Dir(cur)
			if cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
				if "/"+next == path.Clean("/"+p) {
					return "", fmt.Errorf("%s does not exist in the image", p)
				}
				return "", fmt.Errorf("%s does not exist in the image (no /%s)", p, next)
			}
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 { // as Linux (ELOOP)
			return "", fmt.Errorf("%s: too many levels of symlinks", p)
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = ""
		} else if climbsOut(cur, target) {
			return "", fmt.Errorf("symlink /%s -> %s points %w", next, target, ErrOutsideImage)
		}
		parts = append(strings.Split(target, "/"), parts...)
	}
	return cur, nil
}

// climbsOut says whether a relative symlink target, read in directory
// dir (relative to the root), climbs above the root.
func climbsOut(dir, target string) bool {
	depth := 0
	if dir != "" {
		depth = strings.Count(dir, "/") + 1
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// MountLayers mounts the overlay of an image's layers (lowers, topmost
// first) read-only in a new directory under dir, for reading the image as
// a machine sees it (statics here, the microVM driver's disk); unmount
// removes it.
func MountLayers(dir string, lowers []string) (string, func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	m, err := os.MkdirTemp(dir, "merged-")
	if err != nil {
		return "", nil, err
	}
	if err := unix.Mount("overlay", m, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		os.Remove(m)
		return "", nil, fmt.Errorf("mount the image's layers: %w", err)
	}
	return m, func() {
		if err := unix.Unmount(m, unix.MNT_DETACH); err == nil {
			os.Remove(m)
		}
	}, nil
}
