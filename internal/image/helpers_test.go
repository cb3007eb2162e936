package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ent is a tar entry for a test layer.
type ent struct {
	hdr  tar.Header
	body string
}

var epoch = time.Unix(1700000000, 0)

func dir(name string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: epoch}}
}

func file(name, body string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: epoch}, body: body}
}

func owned(e ent, uid, gid int) ent { e.hdr.Uid, e.hdr.Gid = uid, gid; return e }

func symlink(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch}}
}

func hardlink(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, ModTime: epoch}}
}

func whiteout(dir, name string) ent { return file(dir+"/.wh."+name, "", 0o600) }

func opaque(dir string) ent { return file(dir+"/.wh..wh..opq", "", 0o600) }

// layerTar writes entries as an uncompressed layer tar.
func layerTar(t testing.TB, entries ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tree describes every entry under root, without following symlinks:
// "dir 0755", "file 0644 <content>", "symlink -> target", with " uid:gid"
// appended when not 0:0 and the test runs as root (only root can chown).
func tree(t testing.TB, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		var desc string
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			desc = "symlink -> " + target
		case fi.IsDir():
			desc = fmt.Sprintf("dir %04o", modeBits(fi))
		case fi.Mode().IsRegular():
			b, _ := os.ReadFile(p)
			desc = fmt.Sprintf("file %04o %s", modeBits(fi), b)
		default:
			desc = fmt.Sprintf("other %v", fi.Mode())
		}
		st := fi.Sys().(*syscall.Stat_t)
		if os.Geteuid() == 0 && (st.Uid != 0 || st.Gid != 0) {
			desc += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return out
}

// modeBits returns permission bits plus setuid, setgid and sticky, in the
// octal form tar uses.
func modeBits(fi fs.FileInfo) uint32 {
	return uint32(fi.Sys().(*syscall.Stat_t).Mode) & 0o7777
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

// applyAll unpacks layers onto root the way Pull does.
func applyAll(t testing.TB, root string, layers ...[]byte) error {
	t.Helper()
	ap, err := newApplier(root, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ap.Close()
	ap.budget = newBudget(Limits{})
	for i, l := range layers {
		if err := ap.apply(bytes.NewReader(l)); err != nil {
			return fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	return nil
}

// imageTree describes img's root filesystem as a machine sees it: its
// layers mounted as one read-only overlay, or its one tree.
func imageTree(t testing.TB, img *Image) map[string]string {
	t.Helper()
	lowers := img.Lowers()
	if len(lowers) == 1 {
		dir, err := filepath.EvalSymlinks(lowers[0])
		if err != nil {
			t.Fatal(err)
		}
		return tree(t, dir)
	}
	return tree(t, mountLowers(t, lowers))
}

// mountLowers mounts lowers (topmost first) as a read-only overlay until
// the test ends.
func mountLowers(t testing.TB, lowers []string) string {
	t.Helper()
	m := t.TempDir()
	if err := unix.Mount("overlay", m, "overlay", unix.MS_RDONLY, "lowerdir="+strings.Join(lowers, ":")); err != nil {
		t.Fatalf("mount the layers: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(m, unix.MNT_DETACH) })
	return m
}
