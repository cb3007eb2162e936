package microvm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// guestModules are the drivers the guest needs, by module name. Those the
// kernel has built in are simply not found among its modules; their
// dependencies come along.
var guestModules = []string{
	"virtio_mmio",    // the microvm machine's only bus
	"virtio_blk",     // the machine's disk
	"virtio_net",     // its network
	"virtio_console", // the control port to the host
	"ext4",           // the disk's filesystem
	"crc32c_generic", // ext4's metadata checksums
}

// kernel is a guest kernel and the modules the guest needs from it.
type kernel struct {
	Image   string   // vmlinuz (bzImage) or an ELF vmlinux with a PVH note
	Modules []string // paths, in load order (dependencies first)
	// NoACPI is a kernel without ACPI: qemu then lists the virtio-mmio
	// devices on its command line instead.
	NoACPI bool
}

// kernelNeeds are the options a guest kernel must have, built in or as
// modules, and why.
var kernelNeeds = []struct{ option, why string }{
	{"VIRTIO_MMIO", "the microvm machine's devices"},
	{"VIRTIO_BLK", "the machine's disk"},
	{"VIRTIO_NET", "the machine's network"},
	{"VIRTIO_CONSOLE", "the control port to the host"},
	{"EXT4_FS", "the disk's filesystem"},
	{"DEVTMPFS", "/dev"},
	{"BLK_DEV_INITRD", "the initramfs with perch-init"},
	{"SERIAL_8250_CONSOLE", "the console log"},
}

// findKernel looks in dir for vmlinuz and, if there is a modules/ tree,
// the guest's modules and their dependencies. A config file (the kernel's
// .config) beside them, if any, is checked for what the guest needs.
func findKernel(dir string) (*kernel, error) {
	img := filepath.Join(dir, "vmlinuz")
	if _, err := os.Stat(img); err != nil {
		return nil, fmt.Errorf("microvm: no guest kernel at %s: run scripts/deps.sh (it fetches Debian's cloud kernel) or point --microvm-kernel-dir at a directory with vmlinuz (see docs/microvm.md)", img)
	}
	k := &kernel{Image: img}
	if b, err := os.ReadFile(filepath.Join(dir, "config")); err == nil {
		opts := parseKernelConfig(string(b))
		for _, n := range kernelNeeds {
			if v := opts[n.option]; v != "y" && v != "m" {
				return nil, fmt.Errorf("microvm: the guest kernel in %s lacks CONFIG_%s (for %s), by its config; use a kernel that has it (see docs/microvm.md)", dir, n.option, n.why)
			}
		}
		if opts["ACPI"] != "y" {
			if opts["VIRTIO_MMIO_CMDLINE_DEVICES"] != "y" {
				return nil, fmt.Errorf("microvm: the guest kernel in %s has neither CONFIG_ACPI nor CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, by its config: it would find no devices", dir)
			}
			k.NoACPI = true
		}
	}
	modDir := filepath.Join(dir, "modules")
	if _, err := os.Stat(modDir); errors.Is(err, fs.ErrNotExist) {
		return k, nil // everything built in, as in a kernel built for Firecracker
	}
	mods, err := resolveModules(modDir, guestModules)
	if err != nil {
		return nil, fmt.Errorf("microvm: kernel modules in %s: %w", modDir, err)
	}
	k.Modules = mods
	return k, nil
}

// parseKernelConfig reads a kernel .config: option (without CONFIG_) ->
// its value; options "not set" are absent.
func parseKernelConfig(s string) map[string]string {
	opts := map[string]string{}
	for line := range strings.Lines(s) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if name, isOpt := strings.CutPrefix(k, "CONFIG_"); ok && isOpt {
			opts[name] = v
		}
	}
	return opts
}

// moduleName is the kernel's name of a module file: the base name without
// .ko and compression suffix, with '-' as '_'.
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// resolveModules returns the files of want that exist in the tree under
// dir, with everything they depend on, dependencies first. Dependencies
// come from modules.dep when depmod has run, else from each module's own
// .modinfo (a Debian package's tree has no modules.dep).
func resolveModules(dir string, want []string) ([]string, error) {
	files := map[string]string{} // module name -> path
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() && strings.Contains(e.Name(), ".ko") {
			files[moduleName(p)] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	deps, err := readModulesDep(dir)
	if err != nil {
		return nil, err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string) error
	visit = func(name string) error {
		p, ok := files[name]
		if !ok || state[name] == 2 {
			return nil // built in, or already placed
		}
		if state[name] == 1 {
			return fmt.Errorf("modules depend on each other in a cycle through %s", name)
		}
		state[name] = 1
		ds, ok := deps[name]
		if !ok {
			if ds, err = modinfoDepends(p); err != nil {
				return err
			}
		}
		for _, dep := range ds {
			if err := visit(dep); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, p)
		return nil
	}
	for _, name := range want {
		if err := visit(name); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModulesDep reads dir/modules.dep if there is one: module -> the
// modules it needs.
func readModulesDep(dir string) (map[string][]string, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if errors.Is(err, fs.ErrNotExist) {
		return map[string][]string{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		mod, rest, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		var ds []string
		for _, d := range strings.Fields(rest) {
			ds = append(ds, moduleName(d))
		}
		deps[moduleName(mod)] = ds
	}
	return deps, s.Err()
}

// modinfoDepends reads the "depends=" entry of an uncompressed module's
// .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	if !strings.HasSuffix(path, ".ko") {
		return nil, fmt.Errorf("%s is compressed and there is no modules.dep; run depmod for this tree", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read module %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var ds []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					ds = append(ds, strings.ReplaceAll(d, "-", "_"))
				}
			}
			return ds, nil
		}
	}
	return nil, nil
}
