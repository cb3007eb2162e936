package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// Layer mode. A layer unpacked on its own is an overlayfs lower directory:
// a whiteout is a 0:0 character device, an opaque directory carries the
// trusted.overlay.opaque xattr, and what the layer changes below a
// directory that only lower layers list is written into a copy of that
// directory (its owner and mode), or through it when it is a symlink, as
// the merged tree would have it. The lower layers are read, never written,
// and only beneath their roots (no symlink followed while looking).

const overlayOpaqueXattr = "trusted.overlay.opaque"

// lowerEntry is what the merged lower layers have at a path.
type lowerEntry struct {
	st     unix.Stat_t
	target string // a symlink's
	layer  int    // index in applier.lowers
}

// lowerLookup returns the topmost lower layer's entry at rel, or false when
// the lower layers have none (or a whiteout hides it).
func (a *applier) lowerLookup(rel string) (lowerEntry, bool) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		dir = "."
	}
	for i, lfd := range a.lowers {
		pfd, err := openBeneath(lfd, dir)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
				continue // not a directory in this layer
			}
			return lowerEntry{}, false
		}
		var e lowerEntry
		err = unix.Fstatat(pfd, base, &e.st, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && e.st.Mode&unix.S_IFMT == unix.S_IFLNK {
			e.target, err = readlinkAt(pfd, base)
		}
		opaque := isOpaque(pfd)
		unix.Close(pfd)
		if err == nil {
			if e.st.Mode&unix.S_IFMT == unix.S_IFCHR && e.st.Rdev == 0 {
				return lowerEntry{}, false // whited out
			}
			e.layer = i
			return e, true
		}
		if opaque {
			return lowerEntry{}, false // the layers below are hidden here
		}
	}
	return lowerEntry{}, false
}

// openBeneath opens the directory rel under root without following any
// symlink and without leaving root.
func openBeneath(root int, rel string) (int, error) {
	if rel == "." || rel == "" {
		return unix.Dup(root)
	}
	return unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

func isOpaque(fd int) bool {
	buf := make([]byte, 1)
	n, err := unix.Fgetxattr(fd, overlayOpaqueXattr, buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

// copyDirAttrs gives the directory fd the owner and mode of the lower
// layers' directory it stands in for.
func (a *applier) copyDirAttrs(fd int, st *unix.Stat_t) error {
	if a.chown {
		if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmod(fd, st.Mode&permissionBits); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// layerWhiteout marks name in dir deleted for the layers below.
func (a *applier) layerWhiteout(dir, target string) error {
	fd, err := a.openDir(dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := removeAt(fd, target); err != nil {
		return err
	}
	if err := unix.Mknodat(fd, target, unix.S_IFCHR|0o600, 0); err != nil {
		return fmt.Errorf("whiteout %s: %w", path.Join(dir, target), err)
	}
	return nil
}

// layerOpaque hides what the layers below put in dir.
func (a *applier) layerOpaque(dir string) error {
	fd, err := a.openDir(dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("mark %s opaque: %w", dir, err)
	}
	return nil
}

// copyUp copies the regular file at rel in the lower layers into this
// layer's pfd as base, for a hard link to a file of a lower layer (links
// cannot cross layers).
func (a *applier) copyUp(rel string, pfd int, base string) error {
	e, ok := a.lowerLookup(rel)
	if !ok || e.st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: %w", rel, unix.ENOENT)
	}
	// A copy counts: a million links to one big file would otherwise
	// write a million copies.
	if err := a.budget.addBytes(e.st.Size, "a hard link's copy of the "+formatSize(e.st.Size)+" file "+rel); err != nil {
		return err
	}
	dir, name := path.Split(rel)
	spfd, err := openBeneath(a.lowers[e.layer], strings.TrimSuffix(dir, "/"))
	if err != nil {
		return err
	}
	defer unix.Close(spfd)
	sfd, err := unix.Openat(spfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	src := os.NewFile(uintptr(sfd), rel)
	defer src.Close()
	dfd, err := unix.Openat(pfd, base, createFlags, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	dst := os.NewFile(uintptr(dfd), base)
	defer dst.Close()
	if _, err := copySparse(dst, src, a.buf); err != nil {
		return err
	}
	if a.chown {
		if err := unix.Fchown(dfd, int(e.st.Uid), int(e.st.Gid)); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	return unix.Fchmod(dfd, e.st.Mode&permissionBits)
}

// layerRootAttrs gives the layer's root the lower root's owner and mode:
// overlayfs shows the topmost layer's, and the layer's tar may not list
// "./".
func (a *applier) layerRootAttrs() error {
	if len(a.lowers) == 0 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(a.lowers[0], &st); err != nil {
		return err
	}
	return a.copyDirAttrs(a.root, &st)
}

// hardlinkLower is hardlink in layer mode for a target this layer does
// not hold.
func (a *applier) hardlinkLower(name, target string, hdr *tar.Header) error {
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	if err := a.copyUp(target, pfd, base); err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	return nil
}
