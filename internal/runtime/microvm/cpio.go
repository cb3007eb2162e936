package microvm

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// cpioWriter writes the "newc" cpio format, the one the kernel unpacks as
// an initramfs. It makes each file's parent directories first, as the
// kernel needs them to exist.
type cpioWriter struct {
	w    *bufio.Writer
	ino  int
	dirs map[string]bool
}

func newCpio(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriter(w), dirs: map[string]bool{"": true, ".": true}}
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeChr  = 0o020000
)

func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	c.ino++
	nlink := 1
	if mode&modeDir != 0 {
		nlink = 2
	}
	_, err := fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\x00",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0, name)
	if err != nil {
		return err
	}
	return c.pad(110 + len(name) + 1)
}

func (c *cpioWriter) pad(n int) error {
	_, err := c.w.Write(make([]byte, (4-n%4)%4))
	return err
}

// Dir adds a directory and its parents.
func (c *cpioWriter) Dir(name string, perm uint32) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if c.dirs[name] {
		return nil
	}
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.header(name, modeDir|perm, 0, 0, 0)
}

// File adds a regular file of size bytes read from r.
func (c *cpioWriter) File(name string, perm uint32, size int64, r io.Reader) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := c.header(name, modeFile|perm, size, 0, 0); err != nil {
		return err
	}
	if n, err := io.CopyN(c.w, r, size); err != nil {
		return fmt.Errorf("cpio: %s: %d of %d bytes: %w", name, n, size, err)
	}
	return c.pad(int(size % 4))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	return c.header(name, modeChr|perm, 0, major, minor)
}

// Close writes the trailer and flushes.
func (c *cpioWriter) Close() error {
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}
