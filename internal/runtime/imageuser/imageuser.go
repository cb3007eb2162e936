// Package imageuser resolves an image config's user ("name", "uid:gid",
// ...) against the image's own /etc/passwd and /etc/group, as Docker does.
// Runtime drivers import it; it reads files only inside the root
// filesystem it is given.
package imageuser

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// User is who a machine's process runs as.
type User struct {
	UID, GID uint32
	Extra    []uint32 // supplementary groups from /etc/group
	Home     string
}

// Resolve turns an image config's user ("", "uid", "name", "uid:gid",
// "name:group", ...) into ids, reading /etc/passwd and /etc/group of the
// image's root filesystem, given as overlayfs lower directories, topmost
// first (one directory for an image unpacked whole). A numeric user needs no entry; a name does, as in Docker, so a
// typo never runs a process as root.
func Resolve(lowers []string, user string) (User, error) {
	passwd, err := readEtc(lowers, "etc/passwd")
	if err != nil {
		return User{}, err
	}
	groups, err := readEtc(lowers, "etc/group")
	if err != nil {
		return User{}, err
	}
	name, group, hasGroup := strings.Cut(user, ":")
	if name == "" {
		name = "0"
	}
	u := User{Home: "/"}
	var entry []string // the passwd line of the user, if any
	if uid, err := strconv.ParseUint(name, 10, 32); err == nil {
		u.UID = uint32(uid)
		entry = find(passwd, 2, name)
	} else {
		if entry = find(passwd, 0, name); entry == nil {
			return User{}, fmt.Errorf("user %q is not in the image's /etc/passwd; use a numeric uid or add the user to the image", name)
		}
		if u.UID, err = parseID(entry[2]); err != nil {
			return User{}, fmt.Errorf("/etc/passwd entry for %q: %w", name, err)
		}
	}
	if entry != nil {
		if u.GID, err = parseID(entry[3]); err != nil {
			return User{}, fmt.Errorf("/etc/passwd entry for %q: %w", name, err)
		}
		if entry[5] != "" {
			u.Home = entry[5]
		}
		for _, g := range groups {
			if slices.Contains(strings.Split(g[3], ","), entry[0]) {
				if gid, err := parseID(g[2]); err == nil && gid != u.GID {
					u.Extra = append(u.Extra, gid)
				}
			}
		}
	}
	if hasGroup && group != "" {
		if gid, err := strconv.ParseUint(group, 10, 32); err == nil {
			u.GID = uint32(gid)
		} else if g := find(groups, 0, group); g != nil {
			if u.GID, err = parseID(g[2]); err != nil {
				return User{}, fmt.Errorf("/etc/group entry for %q: %w", group, err)
			}
		} else {
			return User{}, fmt.Errorf("group %q is not in the image's /etc/group; use a numeric gid or add the group to the image", group)
		}
	}
	return u, nil
}

// readEtc reads a colon-separated file of the image, with at least 7
// fields a line (passwd's count; group lines are padded). A missing file is
// empty. The image is lowers, topmost first (overlayfs layers: a 0:0
// character device hides a file of the layers below, an opaque directory
// all of them). os.Root keeps a symlink in the image from reaching the
// host's files.
func readEtc(lowers []string, name string) ([][]string, error) {
	b, err := readLayered(lowers, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read /%s of the image: %w", name, err)
	}
	var lines [][]string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		for len(f) < 7 {
			f = append(f, "")
		}
		lines = append(lines, f)
	}
	return lines, nil
}

// find returns the first line whose field i is v.
func find(lines [][]string, i int, v string) []string {
	for _, l := range lines {
		if l[i] == v {
			return l
		}
	}
	return nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad id %q", s)
	}
	return uint32(n), nil
}

// readLayered reads file name (relative) from the topmost of lowers that
// has it, unless a whiteout or an opaque directory above hides it.
func readLayered(lowers []string, name string) ([]byte, error) {
	for _, l := range lowers {
		root, err := os.OpenRoot(l)
		if err != nil {
			return nil, fmt.Errorf("open rootfs: %w", err)
		}
		b, found, hidden, err := readLayer(root, name)
		root.Close()
		if found || err != nil {
			return b, err
		}
		if hidden {
			break
		}
	}
	return nil, fs.ErrNotExist
}

func readLayer(root *os.Root, name string) (b []byte, found, hidden bool, err error) {
	fi, err := root.Lstat(name)
	if err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode()&fs.ModeCharDevice != 0 && st.Rdev == 0 {
			return nil, false, true, nil // whited out
		}
		b, err = root.ReadFile(name)
		return b, err == nil, false, err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, false, err
	}
	if d, err := root.Open(path.Dir(name)); err == nil {
		buf := make([]byte, 1)
		n, xerr := unix.Fgetxattr(int(d.Fd()), "trusted.overlay.opaque", buf)
		d.Close()
		hidden = xerr == nil && n == 1 && buf[0] == 'y'
	}
	return nil, false, hidden, nil
}
