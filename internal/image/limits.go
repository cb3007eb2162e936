package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// Layers are untrusted input: a few MiB of gzip can hold a 1 GiB file of
// zeros, a PAX sparse entry of 1 KiB can claim any size, and a layer can
// list millions of files or paths thousands of directories deep. Each image
// unpacks within Limits, counted over all its layers, and one that would
// pass them is refused before the file that crosses them is written.

// Default limits per image. Most images unpack to under 2 GiB and
// 100,000 entries, and paths are rarely 30 deep; the defaults leave room
// for large ones (a CUDA runtime, a desktop), and a host's operator raises
// them for more (WithLimits).
const (
	DefaultMaxBytes   int64 = 8 << 30
	DefaultMaxEntries int64 = 500_000
	DefaultMaxDepth         = 128
)

// Limits bounds what unpacking one image may write. A zero field takes
// its default; a negative one means no limit.
type Limits struct {
	// MaxBytes bounds the file content the image's layers write (sizes as
	// the tar declares them, so a sparse file counts its full size, though
	// its holes take no disk), hard links copied up from lower layers
	// included.
	MaxBytes int64
	// MaxEntries bounds the tar entries of the image's layers plus the
	// directories they imply (parents a layer does not list).
	MaxEntries int64
	// MaxDepth bounds the directories in any path, symlinks resolved.
	MaxDepth int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes == 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries == 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxDepth == 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

// ErrLimit matches, with errors.Is, an image refused for passing one of
// its Limits. The error is a *LimitError.
var ErrLimit = errors.New("image passes an unpacking limit")

// LimitError is an image refused for passing one of its Limits.
type LimitError struct {
	Limit string // "bytes", "entries" or "depth"
	Max   int64  // the limit
	Got   int64  // what the image reached when refused (at least)
	What  string // what brought it there
}

func (e *LimitError) Error() string {
	var s string
	switch e.Limit {
	case "bytes":
		s = fmt.Sprintf("writes more than %s, the limit per image (%s brings it to %s, %s over)",
			formatSize(e.Max), e.What, formatSize(e.Got), formatSize(e.Got-e.Max))
	case "entries":
		s = fmt.Sprintf("holds more than %d files, directories and links, the limit per image", e.Max)
	case "depth":
		s = fmt.Sprintf("has a path %d directories deep (limit %d, %d over): %s", e.Got, e.Max, e.Got-e.Max, e.What)
	default:
		s = fmt.Sprintf("passes the limit on %s (%d > %d)", e.Limit, e.Got, e.Max)
	}
	return s + "; the image is refused: make it smaller, or raise the host's limit (perch agent --image-max-gb, --image-max-entries, --image-max-depth)"
}

func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// budget counts what an image's layers have written against its limits.
// A nil budget has no limits.
type budget struct {
	lim            Limits
	bytes, entries int64
}

func newBudget(l Limits) *budget { return &budget{lim: l.withDefaults()} }

// addBytes takes n bytes of file content, written for what.
func (b *budget) addBytes(n int64, what string) error {
	if b == nil {
		return nil
	}
	b.bytes += n
	if b.lim.MaxBytes >= 0 && b.bytes > b.lim.MaxBytes {
		return &LimitError{Limit: "bytes", Max: b.lim.MaxBytes, Got: b.bytes, What: what}
	}
	return nil
}

// addEntries takes n new entries.
func (b *budget) addEntries(n int64) error {
	if b == nil {
		return nil
	}
	b.entries += n
	if b.lim.MaxEntries >= 0 && b.entries > b.lim.MaxEntries {
		return &LimitError{Limit: "entries", Max: b.lim.MaxEntries, Got: b.entries}
	}
	return nil
}

// checkDepth refuses a path depth directories deep.
func (b *budget) checkDepth(depth int, path string) error {
	if b == nil || b.lim.MaxDepth < 0 || depth <= b.lim.MaxDepth {
		return nil
	}
	if len(path) > 80 {
		path = path[:80] + "…"
	}
	return &LimitError{Limit: "depth", Max: int64(b.lim.MaxDepth), Got: int64(depth), What: fmt.Sprintf("%q", path)}
}

// holeBlock is the unit copySparse leaves as a hole when all zero: the
// block size of the usual file systems.
const holeBlock = 4096

var zeroBlock [holeBlock]byte

// copySparse copies r to the start of the empty file f through buf (a
// multiple of holeBlock), seeking over whole blocks of zeros so that they
// stay holes, as a sparse file's do: a 1 GiB sparse file or file of zeros
// then takes no disk. It returns the bytes copied.
func copySparse(f *os.File, r io.Reader, buf []byte) (int64, error) {
	var off int64
	for {
		n, rerr := io.ReadFull(r, buf)
		if err := writeNonZero(f, buf[:n], off); err != nil {
			return off, err
		}
		off += int64(n)
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return off, rerr
		}
	}
	// Trailing holes: the size still counts them.
	if err := f.Truncate(off); err != nil {
		return off, err
	}
	return off, nil
}

// writeNonZero writes the runs of b (at file offset off) that are not
// whole zero blocks.
func writeNonZero(f *os.File, b []byte, off int64) error {
	start := -1 // of the current run of data
	for i := 0; i < len(b); i += holeBlock {
		blk := b[i:min(i+holeBlock, len(b))]
		zero := bytes.Equal(blk, zeroBlock[:len(blk)])
		switch {
		case !zero && start < 0:
			start = i
		case zero && start >= 0:
			if _, err := f.WriteAt(b[start:i], off+int64(start)); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		if _, err := f.WriteAt(b[start:], off+int64(start)); err != nil {
			return err
		}
	}
	return nil
}

// formatSize writes n in binary units: 512 B, 64 MiB, 1.5 GiB.
func formatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	v := float64(n) / float64(div)
	s := fmt.Sprintf("%.1f", v)
	if v == float64(int64(v)) {
		s = fmt.Sprintf("%d", int64(v))
	}
	return s + " " + string("KMGTPE"[exp]) + "iB"
}
