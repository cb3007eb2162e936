package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// applier extracts layer tars, in order, onto one root filesystem.
//
// Every file operation goes through a directory fd reached from the root by
// openDir, which resolves symlinks as if the root were "/", and acts on the
// final path component without following it. So no layer, however crafted,
// can read or write outside the root, even through symlinks a lower layer
// planted.
type applier struct {
	root  int
	log   *slog.Logger
	chown bool // only root may give files away; tests may run unprivileged
	// written holds the paths (and their parents) the current layer has
	// created, which an opaque directory marker must not hide.
	written map[string]bool
	// layer: the tar is unpacked on its own as an overlayfs lower
	// directory over lowers (fds of the layers below, topmost first).
	layer  bool
	lowers []int
	// budget counts against the image's Limits (nil: none); buf is the
	// file copy buffer.
	budget *budget
	buf    []byte
}

// newLayerApplier unpacks one layer into the empty directory root, as an
// overlayfs layer over lowers (their directories, topmost first).
func newLayerApplier(root string, lowers []string, log *slog.Logger) (*applier, error) {
	a, err := newApplier(root, log)
	if err != nil {
		return nil, err
	}
	a.layer = true
	for _, l := range lowers {
		fd, err := unix.Open(l, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			a.Close()
			return nil, &os.PathError{Op: "open", Path: l, Err: err}
		}
		a.lowers = append(a.lowers, fd)
	}
	if err := a.layerRootAttrs(); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

func newApplier(root string, log *slog.Logger) (*applier, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return &applier{root: fd, log: log, chown: os.Geteuid() == 0, buf: make([]byte, 256<<10)}, nil
}

func (a *applier) Close() error {
	for _, fd := range a.lowers {
		unix.Close(fd)
	}
	return unix.Close(a.root)
}

// apply extracts one uncompressed layer tar.
func (a *applier) apply(r io.Reader) error {
	a.written = map[string]bool{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read layer tar: %w", err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if err := a.budget.addEntries(1); err != nil {
		return err
	}
	if err := a.budget.checkDepth(strings.Count(name, "/")+1, name); err != nil {
		return err
	}
	if base := path.Base(name); strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(path.Dir(name), base)
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root of the image must be a directory")
		}
		return a.setAttrs(a.root, hdr)
	}
	for p := name; p != "."; p = path.Dir(p) {
		a.written[p] = true
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.mkdir(name, hdr)
	case tar.TypeReg, tar.TypeGNUSparse: // the tar reader expands sparse files, a.file makes holes again
		if err := a.budget.addBytes(hdr.Size, "this "+formatSize(hdr.Size)+" file"); err != nil {
			return err
		}
		return a.file(name, hdr, r)
	case tar.TypeSymlink:
		return a.symlink(name, hdr)
	case tar.TypeLink:
		return a.hardlink(name, hdr)
	case tar.TypeFifo:
		return a.fifo(name, hdr)
	case tar.TypeChar, tar.TypeBlock:
		// The runtime gives every machine its own /dev.
		a.log.Debug("skipping device node", "path", name)
		return nil
	default:
		a.log.Debug("skipping tar entry of unsupported type", "path", name, "type", string(hdr.Typeflag))
		return nil
	}
}

// cleanName makes a tar entry name relative to the root ("." for the root
// itself) and refuses names that climb out of it.
func cleanName(name string) (string, error) {
	if strings.IndexByte(name, 0) >= 0 {
		return "", errors.New("path contains a NUL byte")
	}
	rel := strings.TrimLeft(name, "/")
	for _, c := range strings.Split(rel, "/") {
		if c == ".." {
			return "", errors.New("path leads outside the root filesystem")
		}
	}
	return path.Clean("./" + rel), nil
}
