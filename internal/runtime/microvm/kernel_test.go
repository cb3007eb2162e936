package microvm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestResolveModules: with depmod's modules.dep, the wanted modules come
// with their dependencies, each once, dependencies first; what the tree
// lacks is taken as built in.
func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	files := []string{
		"kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
		"kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/block/virtio_blk.ko",
		"kernel/net/core/failover.ko.xz", "kernel/drivers/net/net_failover.ko.xz", "kernel/drivers/net/virtio_net.ko",
		"kernel/crypto/crc32c-generic.ko",
	}
	for _, f := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), nil, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(`kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko.xz:
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/crypto/crc32c-generic.ko:
`), 0o644)
	got, err := resolveModules(dir, guestModules)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i], _ = filepath.Rel(dir, got[i])
	}
	want := []string{
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_mmio.ko",
		"kernel/drivers/block/virtio_blk.ko",
		"kernel/net/core/failover.ko.xz", "kernel/drivers/net/net_failover.ko.xz", "kernel/drivers/net/virtio_net.ko",
		"kernel/crypto/crc32c-generic.ko",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("modules (-want +got):\n%s", diff)
	}
}

// TestResolveModulesFromModinfo: a Debian kernel package has no
// modules.dep; the dependencies come from the modules themselves.
func TestResolveModulesFromModinfo(t *testing.T) {
	dir := filepath.Join(DefaultKernelDir, "modules")
	if _, err := os.Stat(filepath.Join(dir, "kernel")); err != nil {
		t.Skipf("no guest kernel modules in %s (scripts/deps.sh fetches them)", dir)
	}
	got, err := resolveModules(dir, guestModules)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, moduleName(p))
	}
	t.Logf("load order: %v", names)
	before := func(a, b string) {
		i, j := slices.Index(names, a), slices.Index(names, b)
		if i < 0 || j < 0 || i > j {
			t.Errorf("%s must load before %s: %v", a, b, names)
		}
	}
	before("virtio", "virtio_mmio")
	before("virtio_ring", "virtio_blk")
	before("failover", "net_failover")
	before("net_failover", "virtio_net")
	before("virtio", "virtio_console")
	if len(slices.Compact(slices.Sorted(slices.Values(names)))) != len(names) {
		t.Errorf("a module is loaded twice: %v", names)
	}
}

// TestKernelConfig: a kernel whose config lacks what the guest needs is
// refused with the option's name; one without ACPI gets its devices on
// the command line.
func TestKernelConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte("not really"), 0o644)
	base := "CONFIG_VIRTIO_MMIO=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_NET=m\nCONFIG_EXT4_FS=y\nCONFIG_DEVTMPFS=y\n" +
		"CONFIG_BLK_DEV_INITRD=y\nCONFIG_SERIAL_8250_CONSOLE=y\n"
	for _, tc := range []struct {
		config string
		noACPI bool
		err    string
	}{
		{base + "# CONFIG_VIRTIO_CONSOLE is not set\nCONFIG_ACPI=y\n", false, "lacks CONFIG_VIRTIO_CONSOLE (for the control port to the host)"},
		{base + "CONFIG_VIRTIO_CONSOLE=y\nCONFIG_ACPI=y\n", false, ""},
		{base + "CONFIG_VIRTIO_CONSOLE=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n", true, ""},
		{base + "CONFIG_VIRTIO_CONSOLE=y\n", false, "neither CONFIG_ACPI nor CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES"},
	} {
		os.WriteFile(filepath.Join(dir, "config"), []byte(tc.config), 0o644)
		k, err := findKernel(dir)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("findKernel: err = %v, want one with %q", err, tc.err)
			}
		case err != nil:
			t.Errorf("findKernel: %v", err)
		case k.NoACPI != tc.noACPI || len(k.Modules) != 0:
			t.Errorf("findKernel = %+v; want NoACPI %v and no modules", k, tc.noACPI)
		}
	}
	if _, err := findKernel(t.TempDir()); err == nil || !strings.Contains(err.Error(), "scripts/deps.sh") {
		t.Errorf("findKernel of an empty dir: err = %v, want one saying how to get a kernel", err)
	}
}
