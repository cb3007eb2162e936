package guestinit

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loadModules loads every kernel module in dir, in name order: the host
// names them so that dependencies come first. A module the kernel already
// has (built in, or loaded) is fine; any other failure is logged and the
// boot goes on, to fail later with the missing device's name.
func loadModules(dir string, logf func(string, ...any)) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			logf("kernel modules: %v", err)
		}
		return
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	begin := time.Now()
	for _, name := range names {
		if err := loadModule(filepath.Join(dir, name)); err != nil {
			logf("load kernel module %s: %v", name, err)
		}
	}
	logf("loaded %d kernel modules in %s", len(names), time.Since(begin).Round(time.Millisecond))
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		// .ko.xz, .ko.zst, .ko.gz: the kernel decompresses them itself
		// (CONFIG_MODULE_DECOMPRESS).
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// openPort waits for the virtio-serial port called name and opens it.
// Ports appear under /sys/class/virtio-ports once the host has announced
// them, which can take a moment after the driver loads.
func openPort(name string, timeout time.Duration) (*os.File, error) {
	deadline := time.Now().Add(timeout)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, p := range ports {
			b, err := os.ReadFile(p)
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(p))
			if err := waitFor(dev, time.Until(deadline)); err != nil {
				return nil, err
			}
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err != nil {
				return nil, err
			}
			return f, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the host's control port (virtio-serial \"" + name + "\") did not appear; the kernel needs virtio_console and virtio_mmio")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
