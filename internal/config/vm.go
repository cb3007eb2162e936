package config

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// Fly's memory per CPU when a size or memory is not given: shared-cpu-Nx
// has 256 MB per CPU, performance-Nx 2048 MB.
const (
	sharedMBPerCPU      = 256
	performanceMBPerCPU = 2048
)

// sizes are Fly's VM size presets.
var sizes = map[string]api.Guest{
	"shared-cpu-1x":  {CPUKind: "shared", CPUs: 1, MemoryMB: 256},
	"shared-cpu-2x":  {CPUKind: "shared", CPUs: 2, MemoryMB: 512},
	"shared-cpu-4x":  {CPUKind: "shared", CPUs: 4, MemoryMB: 1024},
	"shared-cpu-8x":  {CPUKind: "shared", CPUs: 8, MemoryMB: 2048},
	"performance-1x": {CPUKind: "performance", CPUs: 1, MemoryMB: 2048},
	"performance-2x": {CPUKind: "performance", CPUs: 2, MemoryMB: 4096},
	"performance-4x": {CPUKind: "performance", CPUs: 4, MemoryMB: 8192},
	"performance-8x": {CPUKind: "performance", CPUs: 8, MemoryMB: 16384},
}

// Sizes lists the VM size presets, smallest first within each kind.
func Sizes() []string {
	return []string{
		"shared-cpu-1x", "shared-cpu-2x", "shared-cpu-4x", "shared-cpu-8x",
		"performance-1x", "performance-2x", "performance-4x", "performance-8x",
	}
}

// Guest resolves the VM's size as Fly does: the size preset (shared-cpu-1x
// when none), then cpu_kind and cpus over it; memory, when not given, is the
// default for the resulting kind and CPU count. Runtime defaults to runc.
func (v VM) Guest() api.Guest {
	g := sizes["shared-cpu-1x"]
	if p, ok := sizes[v.Size]; ok {
		g = p
	}
	if v.CPUKind != "" {
		g.CPUKind = v.CPUKind
	}
	if v.CPUs != 0 {
		g.CPUs = v.CPUs
	}
	g.MemoryMB = g.CPUs * sharedMBPerCPU
	if g.CPUKind == "performance" {
		g.MemoryMB = g.CPUs * performanceMBPerCPU
	}
	if v.MemoryMB != 0 {
		g.MemoryMB = v.MemoryMB
	}
	g.Runtime = cmp.Or(v.Runtime, "runc")
	return g
}

func (d *decoder) vm(s *section) VM {
	var v VM
	if size, p, ok := s.str("size"); ok {
		if _, known := sizes[size]; known {
			v.Size = size
		} else {
			d.errorf(p, "vm size %q is not a size; valid sizes: %s", size, strings.Join(Sizes(), ", "))
		}
	}
	memory, memPath, hasMemory := d.memory(s)
	mb, mbPath, hasMB := s.count("memory_mb", 1)
	switch {
	case hasMemory && hasMB && memory != mb:
		// flyctl applies memory over memory_mb; so do we, and say so.
		d.warnf(mbPath, "memory_mb = %d ignored: memory on line %d (%d MB) wins, as on Fly; set only one", mb, d.lines.line(memPath), memory)
		v.MemoryMB = memory
	case hasMemory:
		v.MemoryMB = memory
	case hasMB:
		v.MemoryMB = mb
	}
	v.CPUs, _, _ = s.count("cpus", 1)
	v.CPUKind, _, _ = s.oneOf("cpu_kind", "shared", "performance")
	v.Runtime, _, _ = s.oneOf("runtime", "runc", "microvm")
	v.Processes, _, _ = s.strs("processes", `["app"]`)
	s.ignore("gpus", "GPUs are not supported")
	s.ignore("gpu_kind", "GPUs are not supported")
	s.ignore("kernel_args", "machines boot Perch's own kernel command line")
	s.ignore("host_dedication_id", "Perch has no dedicated hosts; machines go to any host of their region")
	s.ignore("persist_rootfs", "a machine's root filesystem is kept while it is stopped and replaced with it")
	s.done()
	return v
}

// memory reads memory = "512mb" / "1gb" / "1024" / 1024 (bare numbers are
// MB), as megabytes.
func (d *decoder) memory(s *section) (int, path, bool) {
	v, p, ok := s.get("memory")
	if !ok {
		return 0, p, false
	}
	var mb int
	switch v := v.(type) {
	case string:
		mb, ok = parseMemory(v)
		if !ok {
			d.errorf(p, "memory %q is not a size; write e.g. \"512mb\" or \"1gb\"", v)
			return 0, p, false
		}
	case int64:
		if v < 1 || v > math.MaxInt32 {
			d.errorf(p, "memory must be more than 0 MB, got %d; write e.g. \"512mb\" or \"1gb\"", v)
			return 0, p, false
		}
		mb = int(v)
	default:
		d.errorf(p, "memory must be a size such as \"512mb\" or \"1gb\", got %s", describe(v))
		return 0, p, false
	}
	return mb, p, true
}

// memoryUnits are MB per unit; as in Fly (and Docker), "gb" means GiB.
var memoryUnits = map[string]float64{
	"": 1, "m": 1, "mb": 1, "mib": 1,
	"g": 1024, "gb": 1024, "gib": 1024,
	"k": 1.0 / 1024, "kb": 1.0 / 1024, "kib": 1.0 / 1024,
	"t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024,
}

// parseMemory reads a memory size as whole megabytes, more than 0.
func parseMemory(s string) (int, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	per, ok := memoryUnits[unit]
	if !ok || num == "" {
		return 0, false
	}
	n, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, false
	}
	mb := n * per
	if mb < 1 || mb > math.MaxInt32 || mb != math.Trunc(mb) {
		return 0, false
	}
	return int(mb), true
}

// formatMemory writes megabytes the way fly launch does: "1gb", "512mb".
func formatMemory(mb int) string {
	if mb%1024 == 0 {
		return strconv.Itoa(mb/1024) + "gb"
	}
	return strconv.Itoa(mb) + "mb"
}

// vmFor is the [[vm]] that applies to a process group: the first one naming
// it, else the first one naming no group, else Fly's default.
func (c *Config) vmFor(group string) VM {
	for _, v := range c.VMs {
		if slices.Contains(v.Processes, group) {
			return v
		}
	}
	for _, v := range c.VMs {
		if len(v.Processes) == 0 {
			return v
		}
	}
	return VM{}
}
