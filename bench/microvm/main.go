// Command microvm measures a machine's boot to its first HTTP answer under
// the two runtime drivers, runc and microvm, for the same root filesystem
// (the sample app, examples/hello), and the guest kernel's own boot time
// from its log. The VMs run with KVM where the host's /dev/kvm boots the
// guest, emulated (TCG) otherwise; the output says which. It needs root.
// Run it with bench/run.sh, which records the output in bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/runtime/runc"
)

const bridge = "pbenchvm0"

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary (the shims, and the guest's init)")
	rounds := flag.Int("n", 10, "boots per runtime")
	subnet := flag.String("subnet", "10.214.77.0/24", "private subnet for the bench's bridge")
	initBin := flag.String("init", "", "guest init (default, as an agent chooses: perch-init beside the perch binary, else perch itself)")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, taps, network namespaces)")
	}
	bin, err := filepath.Abs(*perch)
	if err != nil {
		log.Fatal(err)
	}
	if *initBin == "" {
		*initBin = bin
		if slim := filepath.Join(filepath.Dir(bin), "perch-init"); fileExists(slim) {
			*initBin = slim
		}
	}
	dir, err := os.MkdirTemp("", "perch-bench-vm-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	if err := helloRootfs(rootfs); err != nil {
		log.Fatal(err)
	}
	sub := netip.MustParsePrefix(*subnet)
	gw := netip.PrefixFrom(sub.Addr().Next(), sub.Bits())
	if err := hostnet.EnsureBridge(bridge, gw); err != nil {
		log.Fatal(err)
	}
	defer hostnet.DeleteBridge(bridge)
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	rc, err := runc.New(runc.Config{StateDir: filepath.Join(dir, "runc"), ShimCommand: []string{bin, "runc-shim"}, Log: logger})
	if err != nil {
		log.Fatal(err)
	}
	vm, err := microvm.New(microvm.Config{StateDir: filepath.Join(dir, "microvm"), ShimCommand: []string{bin, "microvm-shim"}, Init: *initBin, Log: logger})
	if err != nil {
		log.Fatal(err)
	}
	if err := vm.Check(); err != nil {
		log.Fatal(err)
	}
	addr := gw.Addr().Next()
	next := func() runtime.Net {
		addr = addr.Next()
		return runtime.Net{Bridge: bridge, Addr: netip.PrefixFrom(addr, gw.Bits()), Gateway: gw.Addr()}
	}

	fmt.Printf("machine: %s, %d CPUs; sample app (examples/hello), %d boots per runtime, 1 CPU and 256 MB each\n\n", hostname(), goruntime.NumCPU(), *rounds)
	runcT, _, _, _ := boots(rc, rootfs, next(), *rounds, "")
	vmT, cold, kernel, guest := boots(vm, rootfs, next(), *rounds, filepath.Join(dir, "microvm", "machines", "bench-microvm", "console.log"))
	accel, reason := vm.Accelerator()
	if reason != "" {
		reason = " (" + reason + ")"
	}
	fmt.Printf("microVM accelerator: %s%s; guest init: %s (%d MB)\n\n", accel, reason, filepath.Base(*initBin), fileMB(*initBin))
	fmt.Printf("start to first HTTP answer on the machine's address (same rootfs)\n")
	fmt.Printf("  runc:    median %s (min %s, max %s)\n", round(median(runcT)), round(slices.Min(runcT)), round(slices.Max(runcT)))
	fmt.Printf("  microvm: median %s (min %s, max %s); first boot, with the image's disk and the initramfs made: %s\n",
		round(median(vmT)), round(slices.Min(vmT)), round(slices.Max(vmT)), round(cold))
	fmt.Printf("  ratio microvm / runc: %.1f\n\n", float64(median(vmT))/float64(median(runcT)))
	fmt.Printf("microVM boot by the guest's own clock (perch-init's console line)\n")
	fmt.Printf("  kernel, to starting perch-init (its log: \"Run /perch-init as init process\"): median %s (min %s, max %s)\n",
		round(median(kernel)), round(slices.Min(kernel)), round(slices.Max(kernel)))
	fmt.Printf("  whole guest, to starting the app (modules, disk, network):                  median %s (min %s, max %s)\n",
		round(median(guest)), round(slices.Min(guest)), round(slices.Max(guest)))
}

// boots creates one machine of rootfs in d and starts it 1+n times, timing
// each start to the first HTTP answer; the first start is reported apart
// (cold caches). console, if set, is read for the guest's boot time.
func boots(d runtime.Driver, rootfs string, n runtime.Net, rounds int, console string) (times []time.Duration, cold time.Duration, kernel, guest []time.Duration) {
	ctx := context.Background()
	spec := runtime.Spec{
		ID: "bench-" + d.Name(), Rootfs: rootfs, Hostname: "bench",
		Process: runtime.Process{Args: []string{"/app"}, Env: []string{"PORT=8080", "PERCH_REGION=bench"}, Cwd: "/"},
		Net:     n, CPUs: 1, MemoryMB: 256,
	}
	if err := d.Create(ctx, spec); err != nil {
		log.Fatal(err)
	}
	defer d.Destroy(ctx, spec.ID)
	url := "http://" + n.Addr.Addr().String() + ":8080/"
	for i := 0; i <= rounds; i++ {
		begin := time.Now()
		if err := d.Start(ctx, spec.ID); err != nil {
			log.Fatal(err)
		}
		if err := waitHTTP(url, time.Minute); err != nil {
			log.Fatalf("%s: %v", d.Name(), err)
		}
		took := time.Since(begin)
		if i == 0 {
			cold = took
		} else {
			times = append(times, took)
		}
		if err := d.Stop(ctx, spec.ID, syscall.SIGTERM, 10*time.Second); err != nil {
			log.Fatal(err)
		}
		if console != "" && i > 0 {
			if k, g, ok := lastBoot(console); ok {
				kernel, guest = append(kernel, k), append(guest, g)
			}
		}
	}
	return times, cold, kernel, guest
}

var bootLine = regexp.MustCompile(`perch-init: kernel booted in ([0-9.]+)s, the guest ready in ([0-9.]+)s`)

// lastBoot is the latest boot perch-init logged on the console, by the
// guest's clock: the kernel's part (to starting the init) and the whole
// guest's (to starting the app).
func lastBoot(console string) (kernel, guest time.Duration, ok bool) {
	b, err := os.ReadFile(console)
	if err != nil {
		return 0, 0, false
	}
	m := bootLine.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0, 0, false
	}
	last := m[len(m)-1]
	k, err1 := strconv.ParseFloat(string(last[1]), 64)
	g, err2 := strconv.ParseFloat(string(last[2]), 64)
	return time.Duration(k * float64(time.Second)), time.Duration(g * float64(time.Second)), err1 == nil && err2 == nil
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}

func waitHTTP(url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not answer within %s: %v", url, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// helloRootfs is the sample app as the image store would unpack it: the
// static binary as /app, with /etc/passwd, /etc/group and /tmp.
func helloRootfs(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "app"), "./examples/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build examples/hello: %w\n%s", err, out)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func round(d time.Duration) time.Duration {
	if d > 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(100 * time.Microsecond)
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func fileMB(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size() >> 20
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
