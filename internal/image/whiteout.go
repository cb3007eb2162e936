package image

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Whiteouts, as the OCI image spec defines them: ".wh.NAME" deletes NAME
// from the layers below; ".wh..wh..opq" in a directory hides everything the
// layers below put in it.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

func (a *applier) whiteout(dir, base string) error {
	if base == whiteoutOpaque {
		if a.layer {
			return a.layerOpaque(dir)
		}
		return a.opaque(dir)
	}
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if strings.HasPrefix(target, whiteoutPrefix) {
		return nil // other AUFS bookkeeping (.wh..wh.plnk and the like); nothing to apply
	}
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("whiteout %q names no file", base)
	}
	if a.layer {
		return a.layerWhiteout(dir, target)
	}
	fd, err := a.openDir(dir, false)
	if missing(err) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return removeAt(fd, target)
}

// opaque empties dir of what lower layers put there. It may come before or
// after this layer's own entries in dir, so those are kept. The marker says
// the directory exists in this layer, so it is made if missing, as Docker
// does.
func (a *applier) opaque(dir string) error {
	for p := dir; p != "."; p = path.Dir(p) {
		a.written[p] = true
	}
	fd, err := a.openDir(dir, true)
	if missing(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return a.removeUnwritten(fd, dir)
}

func (a *applier) removeUnwritten(fd int, dir string) error {
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if !a.written[p] {
			if err := removeAt(fd, n); err != nil {
				return err
			}
			continue
		}
		sub, err := unix.Openat(fd, n, openDirFlags, 0)
		if err != nil {
			continue // a file or symlink this layer wrote
		}
		err = a.removeUnwritten(sub, p)
		unix.Close(sub)
		if err != nil {
			return err
		}
	}
	return nil
}

func missing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
}
