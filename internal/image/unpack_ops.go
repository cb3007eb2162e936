package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	openDirFlags   = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	createFlags    = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	permissionBits = 0o7777 // permissions plus setuid, setgid, sticky
)

// mkdir makes a directory, keeping one a lower layer made (and its
// contents), replacing anything else at that path.
func (a *applier) mkdir(name string, hdr *tar.Header) error {
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	switch err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); {
	case err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// keep it
	case err == nil || errors.Is(err, unix.ENOENT):
		if err := removeAt(pfd, base); err != nil {
			return err
		}
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	default:
		return fmt.Errorf("stat: %w", err)
	}
	fd, err := unix.Openat(pfd, base, openDirFlags, 0)
	if err != nil {
		return fmt.Errorf("open directory: %w", err)
	}
	defer unix.Close(fd)
	// Directory times are left alone: the entries unpacked into a directory
	// after it change them anyway, and nothing at run time depends on them.
	return a.setAttrs(fd, hdr)
}

func (a *applier) file(name string, hdr *tar.Header, r io.Reader) error {
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	fd, err := unix.Openat(pfd, base, createFlags, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = copySparse(f, r, a.buf)
	if err == nil {
		err = a.setAttrs(int(f.Fd()), hdr)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return a.setTimes(pfd, base, hdr)
}

func (a *applier) symlink(name string, hdr *tar.Header) error {
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if a.chown {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown symlink: %w", err)
		}
	}
	return a.setTimes(pfd, base, hdr)
}

// hardlink links name to an entry already in the tree. The link target is
// resolved inside the root like any other path.
func (a *applier) hardlink(name string, hdr *tar.Header) error {
	target, err := cleanName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("hard link target: %w", err)
	}
	if target == "." {
		return errors.New("hard link to the root directory")
	}
	if target == name {
		return nil
	}
	spfd, sbase, err := a.openParent(target, false)
	if err == nil && a.layer {
		var st unix.Stat_t
		if unix.Fstatat(spfd, sbase, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			unix.Close(spfd)
			err = unix.ENOENT
		}
	}
	if missing(err) && a.layer {
		return a.hardlinkLower(name, target, hdr)
	}
	if err != nil {
		return fmt.Errorf("hard link target %q: %w", hdr.Linkname, err)
	}
	defer unix.Close(spfd)
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	// Flags 0: link the target entry itself, never what it points to.
	if err := unix.Linkat(spfd, sbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hard link to %q: %w", hdr.Linkname, err)
	}
	return nil
}

func (a *applier) fifo(name string, hdr *tar.Header) error {
	pfd, base, err := a.openParent(name, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, base); err != nil {
		return err
	}
	if err := unix.Mknodat(pfd, base, unix.S_IFIFO|0o600, 0); err != nil {
		return fmt.Errorf("mkfifo: %w", err)
	}
	// Opening a FIFO would block; it is ours and was just made, so acting
	// on it by name is safe.
	if a.chown {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&permissionBits), 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// setAttrs sets owner, then mode (a chown clears setuid bits), then
// extended attributes such as security.capability.
func (a *applier) setAttrs(fd int, hdr *tar.Header) error {
	if a.chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&permissionBits)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if err := unix.Fsetxattr(fd, attr, []byte(v), 0); err != nil {
				a.log.Debug("skipping extended attribute", "path", hdr.Name, "attr", attr, "err", err)
			}
		}
	}
	return nil
}

func (a *applier) setTimes(pfd int, base string, hdr *tar.Header) error {
	mtime, err := unix.TimeToTimespec(hdr.ModTime)
	if err != nil {
		return nil // out of range for the kernel: keep the extraction time
	}
	atime := mtime
	if t, err := unix.TimeToTimespec(hdr.AccessTime); err == nil && !hdr.AccessTime.IsZero() {
		atime = t
	}
	if err := unix.UtimesNanoAt(pfd, base, []unix.Timespec{atime, mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
