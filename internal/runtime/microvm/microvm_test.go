package microvm

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// TestMain lets the test binary be the shim, as the perch binary is in
// production.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "microvm-shim" {
		os.Exit(ShimMain(os.Args[2:]))
	}
	dir, err := os.MkdirTemp("", "perch-microvm-test-")
	if err != nil {
		panic(err)
	}
	tmpDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tmpDir lasts as long as the test binary: the slim init and the cache.
var tmpDir string

// needVM skips a test that boots VMs where this host cannot.
func needVM(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for tap devices and the host bridge; run the tests as root")
	}
	d, err := New(Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	d.cfg.Init = os.Args[0] // any file; the slim init is built later
	if err := d.Check(); err != nil {
		t.Skipf("cannot boot microVMs here: %v", err)
	}
}

// slimInit builds the static perch-init once per test binary: the test
// binary itself may be dynamically linked and race-instrumented, too big
// and slow for a guest of 128 MB.
var slimInit = sync.OnceValues(func() (string, error) {
	out := filepath.Join(tmpDir, "perch-init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "github.com/perchhq/perch/internal/runtime/microvm/guestinit/perchinit")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build perch-init: %v\n%s", err, b)
	}
	return out, nil
})

// stateDirs gives each test one state dir, however many drivers it makes.
var stateDirs sync.Map // *testing.T -> string

func testStateDir(t *testing.T) string {
	dir, _ := stateDirs.LoadOrStore(t, t.TempDir())
	t.Cleanup(func() { stateDirs.Delete(t) })
	return dir.(string)
}

// sharedCache is one image-disk and initramfs cache for the whole test
// binary, as one agent has: only the first machine of an image pays for
// mkfs.
func sharedCache() string { return filepath.Join(tmpDir, "cache") }

func newTestDriver(t *testing.T) *Driver {
	t.Helper()
	initBin, err := slimInit()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{
		StateDir: testStateDir(t), CacheDir: sharedCache(), ShimCommand: []string{exe, "microvm-shim"},
		Init: initBin, Log: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestConformance(t *testing.T) {
	needVM(t)
	br := hostnettest.New(t)
	env := drivertest.Env{
		Rootfs:      drivertest.BuildRootfs(t),
		Net:         func(t *testing.T) runtime.Net { return br.Net(t) },
		Net6:        func(t *testing.T) runtime.Net { return br.Net6(t) },
		MemoryLimit: memoryLimit,
		Leftovers:   leftovers,
	}
	drivertest.Run(t, func(t *testing.T) runtime.Driver { return newTestDriver(t) }, env)
}

// memoryLimit is the memory the machine's VM was given: qemu's -m.
func memoryLimit(t *testing.T, id string) int64 {
	t.Helper()
	pid, err := machinedir.ReadPid(filepath.Join(testStateDir(t), "machines", id, fileQEMUPid))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	for i, a := range args {
		if a == "-m" && i+1 < len(args) {
			var mb int64
			if _, err := fmt.Sscanf(args[i+1], "%dM", &mb); err != nil {
				t.Fatalf("qemu -m %q: %v", args[i+1], err)
			}
			return mb << 20
		}
	}
	t.Fatalf("qemu of %s has no -m: %q", id, args)
	return 0
}

// leftovers lists what of machine id remains on the host.
func leftovers(t *testing.T, id string) []string {
	t.Helper()
	var left []string
	dir := filepath.Join(testStateDir(t), "machines", id)
	for _, p := range []string{dir, "/sys/class/net/" + hostnet.TapName(id)} {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	out, _ := exec.Command("pgrep", "-f", "perch-"+id).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		left = append(left, "qemu process "+s)
	}
	return left
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
