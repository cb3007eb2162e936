package runc

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/hostnet/hostnettest"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/drivertest"
)

// TestMain lets the test binary be the shim (and a stand-in agent), as the
// perch binary is in production.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "runc-shim":
			os.Exit(ShimMain(os.Args[2:]))
		case "agent-start":
			os.Exit(agentStart(os.Args[2:]))
		}
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for runc, mounts and network namespaces; run the tests as root")
	}
}

// stateDirs gives each test one state dir, however many drivers it makes.
var stateDirs sync.Map // *testing.T -> string

func testStateDir(t *testing.T) string {
	dir, _ := stateDirs.LoadOrStore(t, t.TempDir())
	t.Cleanup(func() { stateDirs.Delete(t) })
	return dir.(string)
}

func shimCommand(t *testing.T) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe, "runc-shim"}
}

func newTestDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{StateDir: testStateDir(t), ShimCommand: shimCommand(t), Log: testLogger(t)})
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
	needRoot(t)
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

// memoryLimit reads the machine's cgroup v1 memory limit; on cgroup v2 it
// reads memory.max.
func memoryLimit(t *testing.T, id string) int64 {
	t.Helper()
	for _, p := range []string{
		filepath.Join("/sys/fs/cgroup/memory", defaultCgrp, id, "memory.limit_in_bytes"),
		filepath.Join("/sys/fs/cgroup", defaultCgrp, id, "memory.max"),
	} {
		if b, err := os.ReadFile(p); err == nil {
			n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			return n
		}
	}
	t.Fatalf("no memory cgroup for %s", id)
	return 0
}

// leftovers lists what of machine id remains on the host.
func leftovers(t *testing.T, id string) []string {
	t.Helper()
	var left []string
	dir := filepath.Join(testStateDir(t), "machines", id)
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mountinfo), dir) {
		left = append(left, "mount under "+dir)
	}
	for _, p := range []string{dir, filepath.Join(testStateDir(t), "runc", id), hostnet.NetnsPath(id),
		"/sys/class/net/" + hostnet.VethName(id)} {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	cgroups, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", defaultCgrp, id))
	left = append(left, cgroups...)
	// Loop devices of the machine's disk.
	backing, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, b := range backing {
		if f, err := os.ReadFile(b); err == nil && strings.HasPrefix(string(f), dir+"/") {
			left = append(left, "loop device "+b)
		}
	}
	// The user namespace's pins and root binds, and the id range.
	pins, _ := filepath.Glob(filepath.Join(usernsDir, id+"-*"))
	binds, _ := filepath.Glob(filepath.Join(rootsDir, id+"-*"))
	left = append(append(left, pins...), binds...)
	claims, _ := filepath.Glob(filepath.Join(idRangeDir, "[0-9]*"))
	for _, c := range claims {
		if owner, err := os.ReadFile(c); err == nil && string(owner) == dir {
			left = append(left, "id range "+c)
		}
	}
	return left
}

// destroyAll is a safety net for tests that fail half way.
func destroyAll(t *testing.T, d *Driver) {
	t.Cleanup(func() {
		ids, _ := d.List(context.Background())
		for _, id := range ids {
			if err := d.Destroy(context.Background(), id); err != nil {
				t.Error(fmt.Errorf("cleanup: %w", err))
			}
		}
	})
}
