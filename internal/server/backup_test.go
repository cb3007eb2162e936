package server

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/perchhq/perch/internal/api"
)

// TestRestoreFromCopy follows docs/operations.md's backup of a single
// server: a copy of its stopped --data-dir, put back later, brings back
// the apps and machines of the copy (and not those made after it).
func TestRestoreFromCopy(t *testing.T) {
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	ctx := context.Background()
	s := startServer(t, dir)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "kept"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:1"}})
	if err != nil {
		t.Fatal(err)
	}
	s.stop()
	copyDir(t, dir, backup)

	s = startServer(t, dir)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "later"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.RegisterHost(ctx, api.Host{ID: h.ID, Region: "iad", CPUs: 2, MemoryMB: 1024}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:2"}}); err != nil {
		t.Fatal(err)
	}
	s.stop()

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, dir)
	s = startServer(t, dir)
	got, err := s.c.GetMachine(ctx, "kept", m.ID)
	if err != nil || got.PrivateIP != m.PrivateIP || got.HostID != h.ID {
		t.Errorf("machine of the copy after the restore: %+v, %v; want %s on %s", got, err, m.ID, h.ID)
	}
	if ms, err := s.c.ListMachines(ctx, "kept", ""); err != nil || len(ms) != 1 {
		t.Errorf("machines after the restore: %d, %v; want the copy's one", len(ms), err)
	}
	if _, err := s.c.GetApp(ctx, "later"); err == nil {
		t.Errorf("app made after the copy is there after the restore")
	}
	apps, err := s.c.ListApps(ctx)
	if err != nil || len(apps) != 1 || apps[0].Name != "kept" {
		t.Errorf("apps after the restore: %+v, %v; want kept alone", apps, err)
	}
}

// copyDir copies the tree src to dst, modes kept.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), info.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
