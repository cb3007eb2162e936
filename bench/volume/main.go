// Command volume measures write throughput into a volume from inside a
// runc machine against the same writes on the host's disk directly: the
// cost of the volume's ext4 image on a loop device (package volume),
// bind-mounted into the machine. Also the machine's own writable layer
// (overlayfs upper dir) for comparison, and a volume attached to a
// microVM as its virtio disk (-vm-rounds boots; its throughput is timed
// inside the guest, so the boot is not counted). Each round writes -mb
// MiB in 1 MiB writes and fsyncs, by the same static program
// (drivertest's testapp "fill"), on the same filesystem. Needs root.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/microvm"
	"github.com/perchhq/perch/internal/runtime/runc"
	"github.com/perchhq/perch/internal/volume"
)

func main() {
	perch := flag.String("perch", "bin/perch", "perch binary (the runc shim)")
	rounds := flag.Int("n", 5, "rounds per place")
	mb := flag.Int("mb", 256, "MiB written per round (the volume is twice that)")
	base := flag.String("dir", "/var/tmp", "directory on the disk to measure (state dir, volume image, host file)")
	vmRounds := flag.Int("vm-rounds", 3, "microVM boots (0: none)")
	initBin := flag.String("init", "", "microVM guest init (default: perch-init beside -perch, else -perch)")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("needs root (runc, mount, loop devices)")
	}
	if *mb < 1 || *mb > 4096 {
		log.Fatal("-mb must be 1-4096")
	}
	bin, err := filepath.Abs(*perch)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp(*base, "perch-bench-volume-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	rootfs := filepath.Join(dir, "rootfs")
	app := filepath.Join(rootfs, "app")
	if err := buildApp(rootfs); err != nil {
		log.Fatal(err)
	}
	vdir := filepath.Join(dir, "volumes", "vol_bench")
	mnt := filepath.Join(vdir, "mnt")
	if err := volume.Create(vdir, int64(2**mb)<<20); err != nil {
		log.Fatal(err)
	}
	if err := volume.Mount(vdir, mnt); err != nil {
		log.Fatal(err)
	}
	defer volume.Destroy(vdir, mnt) //nolint:errcheck
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	d, err := runc.New(runc.Config{StateDir: filepath.Join(dir, "runc"), ShimCommand: []string{bin, "runc-shim"}, Log: logger})
	if err != nil {
		log.Fatal(err)
	}
	hostDir := filepath.Join(dir, "host")
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		log.Fatal(err)
	}

	var onHost, onVolume, onLayer []float64
	for i := 0; i < *rounds; i++ {
		out, err := exec.Command(app, "fill", filepath.Join(hostDir, "f"), fmt.Sprint(*mb)).Output()
		if err != nil {
			log.Fatalf("fill on the host: %v", err)
		}
		onHost = append(onHost, rate(string(out)))
		os.Remove(filepath.Join(hostDir, "f"))
		onVolume = append(onVolume, inMachine(d, rootfs, mnt, fmt.Sprintf("bench-vol-%d", i), "/data/f", *mb))
		os.Remove(filepath.Join(mnt, "f"))
		onLayer = append(onLayer, inMachine(d, rootfs, mnt, fmt.Sprintf("bench-layer-%d", i), "/tmp/f", *mb))
	}
	fs, _ := exec.Command("findmnt", "-n", "-o", "FSTYPE,SOURCE", "--target", dir).Output()
	fmt.Printf("volume write throughput: %d rounds of %d MiB (1 MiB writes, then fsync), %s on %s\n", *rounds, *mb, *base, strings.TrimSpace(string(fs)))
	fmt.Printf("  host disk directly:                    median %6.1f MiB/s  (min %.1f, max %.1f)\n", median(onHost), slices.Min(onHost), slices.Max(onHost))
	fmt.Printf("  volume in a runc machine (ext4 image): median %6.1f MiB/s  (min %.1f, max %.1f)\n", median(onVolume), slices.Min(onVolume), slices.Max(onVolume))
	fmt.Printf("  machine's writable layer (overlayfs):  median %6.1f MiB/s  (min %.1f, max %.1f)\n", median(onLayer), slices.Min(onLayer), slices.Max(onLayer))
	fmt.Printf("  ratio volume / host: %.2f\n", median(onVolume)/median(onHost))
	if *vmRounds > 0 {
		inVM := microVMRounds(dir, bin, *initBin, rootfs, *mb, *vmRounds, logger)
		if len(inVM) > 0 {
			fmt.Printf("  volume in a microVM (virtio disk):     median %6.1f MiB/s  (min %.1f, max %.1f; %d boots, %s)\n", median(inVM), slices.Min(inVM), slices.Max(inVM), len(inVM), accel)
			fmt.Printf("  ratio microVM volume / host: %.2f\n", median(inVM)/median(onHost))
		}
	}
}

var accel = "?"

// microVMRounds fills a volume attached to a fresh microVM rounds times.
func microVMRounds(dir, bin, initBin, rootfs string, mb, rounds int, logger *slog.Logger) []float64 {
	if initBin == "" {
		initBin = bin
		if slim := filepath.Join(filepath.Dir(bin), "perch-init"); fileExists(slim) {
			initBin = slim
		}
	}
	vm, err := microvm.New(microvm.Config{StateDir: filepath.Join(dir, "microvm"), ShimCommand: []string{bin, "microvm-shim"}, Init: initBin, Log: logger})
	if err == nil {
		err = vm.Check()
	}
	if err != nil {
		fmt.Printf("  volume in a microVM: skipped: %v\n", err)
		return nil
	}
	vdir := filepath.Join(dir, "volumes", "vol_vm")
	if err := volume.Create(vdir, int64(2*mb)<<20); err != nil {
		log.Fatal(err)
	}
	var out []float64
	for i := 0; i < rounds; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		id := fmt.Sprintf("bench-vm-%d", i)
		spec := runtime.Spec{ID: id, Rootfs: rootfs, MemoryMB: 256, Process: runtime.Process{Args: []string{"/app", "fill", "/data/f", fmt.Sprint(mb)}},
			Mounts: []runtime.Mount{{Image: volume.Image(vdir), Destination: "/data"}}}
		if err := vm.Create(ctx, spec); err != nil {
			log.Fatal(err)
		}
		if err := vm.Start(ctx, id); err != nil {
			log.Fatal(err)
		}
		if st, err := vm.Wait(ctx, id); err != nil || st.ExitCode != 0 {
			log.Fatalf("microVM %s: %v, exit %d", id, err, st.ExitCode)
		}
		for _, l := range vm.Logs(id) {
			if l.Stream == "stdout" {
				b, _ := os.ReadFile(l.Path)
				lines := strings.Split(strings.TrimSpace(string(b)), "\n")
				out = append(out, rate(lines[len(lines)-1]))
			}
		}
		_ = vm.Destroy(context.Background(), id)
		cancel()
	}
	accel, _ = vm.Accelerator()
	return out
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// inMachine runs fill in a fresh runc machine with the volume at /data
// and returns MiB/s.
func inMachine(d *runc.Driver, rootfs, mnt, id, path string, mb int) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	spec := runtime.Spec{ID: id, Rootfs: rootfs, Process: runtime.Process{Args: []string{"/app", "fill", path, fmt.Sprint(mb)}},
		Mounts: []runtime.Mount{{Source: mnt, Destination: "/data"}}}
	if err := d.Create(ctx, spec); err != nil {
		log.Fatal(err)
	}
	defer d.Destroy(context.Background(), id) //nolint:errcheck
	if err := d.Start(ctx, id); err != nil {
		log.Fatal(err)
	}
	if st, err := d.Wait(ctx, id); err != nil || st.ExitCode != 0 {
		log.Fatalf("machine %s: %v, exit %d", id, err, st.ExitCode)
	}
	for _, l := range d.Logs(id) {
		if l.Stream == "stdout" {
			b, _ := os.ReadFile(l.Path)
			return rate(string(b))
		}
	}
	log.Fatalf("machine %s: no output", id)
	return 0
}

// rate reads fill's "filled BYTES SECONDS ERR" as MiB/s.
func rate(out string) float64 {
	var n int64
	var secs float64
	var msg string
	if _, err := fmt.Sscanf(strings.TrimSpace(out), "filled %d %f %s", &n, &secs, &msg); err != nil || msg != "-" || secs <= 0 {
		log.Fatalf("fill said %q", out)
	}
	return float64(n) / (1 << 20) / secs
}

// buildApp builds drivertest's testapp, static, as rootfs/app.
func buildApp(rootfs string) error {
	if err := os.MkdirAll(filepath.Join(rootfs, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "group"), []byte("root:x:0:\n"), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(rootfs, "app"), "./internal/runtime/drivertest/testapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build testapp: %w\n%s", err, out)
	}
	return nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
