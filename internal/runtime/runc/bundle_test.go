package runc

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
)

func TestOCISpec(t *testing.T) {
	spec := runtime.Spec{
		ID:     "m1",
		Rootfs: "/images/x",
		Process: runtime.Process{
			Args: []string{"/app", "serve"},
			Env:  []string{"PORT=8080", "HOME=/data"},
		},
		Net:      runtime.Net{Bridge: "br", Addr: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.0.0.1")},
		CPUs:     2,
		MemoryMB: 256,
	}
	u := imageuser.User{UID: 1000, GID: 1000, Extra: []uint32{27}, Home: "/home/app"}
	s := ociSpec(spec, "/state/machines/m1/rootfs", "/run/netns/perch-m1", u, "perch", 1<<30, "/run/perch/userns/m1")

	if s.Root.Path != "/state/machines/m1/rootfs" || s.Root.Readonly {
		t.Errorf("root = %+v, want the writable machine rootfs", s.Root)
	}
	if s.Hostname != "m1" {
		t.Errorf("hostname = %q, want the machine id when none is given", s.Hostname)
	}
	p := s.Process
	if p.Terminal || p.Cwd != "/" || !slices.Equal(p.Args, spec.Process.Args) {
		t.Errorf("process terminal %v, cwd %q, args %v", p.Terminal, p.Cwd, p.Args)
	}
	if diff := cmp.Diff(specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{27}}, p.User); diff != "" {
		t.Errorf("user (-want +got):\n%s", diff)
	}
	// PATH is added, HOME is the machine's own.
	if diff := cmp.Diff([]string{"PORT=8080", "HOME=/data", defaultPath}, p.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if s.Linux.CgroupsPath != "/perch/m1" {
		t.Errorf("cgroupsPath = %q", s.Linux.CgroupsPath)
	}
	if m := s.Linux.Resources.Memory; m == nil || *m.Limit != 256<<20 || *m.Swap != 256<<20 {
		t.Errorf("memory = %+v, want limit and memory+swap of 256 MiB", m)
	}
	if c := s.Linux.Resources.CPU; c == nil || *c.Quota != 200000 || *c.Period != 100000 {
		t.Errorf("cpu = %+v, want 200000us every 100000us", c)
	}
	want := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.NetworkNamespace, Path: "/run/netns/perch-m1"},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace},
		{Type: specs.UserNamespace, Path: "/run/perch/userns/m1"},
	}
	if diff := cmp.Diff(want, s.Linux.Namespaces); diff != "" {
		t.Errorf("namespaces (-want +got):\n%s", diff)
	}
	wantIDs := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 30, Size: 65536}}
	if !slices.Equal(s.Linux.UIDMappings, wantIDs) || !slices.Equal(s.Linux.GIDMappings, wantIDs) {
		t.Errorf("id mappings = %v, %v; want root at host id 1<<30", s.Linux.UIDMappings, s.Linux.GIDMappings)
	}
	if !p.NoNewPrivileges || s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActErrno {
		t.Errorf("no new privileges %v, seccomp %v; want both", p.NoNewPrivileges, s.Linux.Seccomp != nil)
	}
}

// TestOCISpecDefaultLimits: a spec asking no limits still gets the
// smallest preset's memory and the pids limit, never unlimited.
func TestOCISpecDefaultLimits(t *testing.T) {
	s := ociSpec(runtime.Spec{ID: "m2", Process: runtime.Process{Args: []string{"x"}}}, "/r", "", imageuser.User{Home: "/"}, "perch", 0, "")
	r := s.Linux.Resources
	if r.Memory == nil || *r.Memory.Limit != DefaultMemoryMB<<20 || r.CPU != nil {
		t.Errorf("resources = %+v, want %d MiB of memory and no CPU limit when the spec asks none", r, DefaultMemoryMB)
	}
	if r.Pids == nil || *r.Pids.Limit != PidsLimit {
		t.Errorf("pids = %+v, want a limit of %d", r.Pids, PidsLimit)
	}
	if !slices.Contains(s.Process.Env, "HOME=/") {
		t.Errorf("env %v has no HOME", s.Process.Env)
	}
}
