package microvm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// initramfsFormat changes whenever the initramfs layout does, so cached
// ones are rebuilt.
const initramfsFormat = "1"

// The guest's init, as the kernel command line names it (rdinit=).
const guestInitPath = "/perch-init"

// buildInitramfs returns the initramfs for this init binary and these
// modules, building it into cacheDir once: an uncompressed cpio, since
// under emulation unpacking costs the guest more than reading the bytes.
func buildInitramfs(cacheDir, initBin string, modules []string) (string, error) {
	key, err := initramfsKey(initBin, modules)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, "initramfs-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	libs, err := sharedLibs(initBin)
	if err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(cacheDir, ".initramfs-*")
	if err != nil {
		return "", fmt.Errorf("microvm: initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	c := newCpio(tmp)
	err = writeInitramfs(c, initBin, libs, modules)
	if err == nil {
		err = c.Close()
	}
	if err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err != nil {
		return "", fmt.Errorf("microvm: initramfs: %w", err)
	}
	// Concurrent builders write the same bytes; the last rename wins.
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("microvm: initramfs: %w", err)
	}
	return out, nil
}

func writeInitramfs(c *cpioWriter, initBin string, libs map[string]string, modules []string) error {
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "newroot", "perch/modules"} {
		if err := c.Dir(d, 0o755); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for the init's stdio before any
	// devtmpfs is mounted.
	if err := c.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := addFile(c, guestInitPath, initBin, 0o755); err != nil {
		return err
	}
	for inGuest, onHost := range libs {
		if err := addFile(c, inGuest, onHost, 0o755); err != nil {
			return err
		}
	}
	for i, m := range modules {
		// The init loads them in name order, which is this order.
		name := fmt.Sprintf("perch/modules/%02d-%s", i, filepath.Base(m))
		if err := addFile(c, name, m, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func addFile(c *cpioWriter, name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return c.File(name, perm, fi.Size(), bufio.NewReaderSize(f, 1<<20))
}

// initramfsKey changes when the init binary or any module does.
func initramfsKey(initBin string, modules []string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, initramfsFormat)
	for _, p := range append([]string{initBin}, modules...) {
		fi, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("microvm: initramfs: %w", err)
		}
		fmt.Fprintln(h, p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// sharedLibs returns what a dynamically linked init needs to run in the
// guest, as guest path -> host file: its ELF interpreter and the libraries
// ldd finds. A perch built with cgo (the default where gcc is installed)
// is such a binary; a static one needs nothing.
func sharedLibs(bin string) (map[string]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("microvm: guest init %s: %w", bin, err)
	}
	defer f.Close()
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("microvm: guest init %s: %w", bin, err)
			}
			interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	if interp == "" {
		return nil, nil
	}
	libs := map[string]string{interp: interp}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("microvm: guest init %s is dynamically linked and ldd failed: %w; build perch with CGO_ENABLED=0 or set the init to a static perch-init", bin, err)
	}
	// Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"
	// or "/lib64/ld-linux-x86-64.so.2 (0x...)".
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		var p string
		switch {
		case len(f) >= 3 && f[1] == "=>":
			p = f[2]
		case len(f) >= 1 && filepath.IsAbs(f[0]):
			p = f[0]
		}
		if filepath.IsAbs(p) {
			libs[p] = p
		}
	}
	return libs, nil
}
