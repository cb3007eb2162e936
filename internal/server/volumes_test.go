package server

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/perchhq/perch/internal/agent"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/volume"
	"golang.org/x/sys/unix"
)

// volumeHost registers a host of region with free disk and answers its
// volume requests as its agent does (agent.VolumeOp on a state dir of
// the test's: real images, nothing mounted).
func volumeHost(t *testing.T, s *testServer, region string, free int64) (api.Host, string) {
	t.Helper()
	h, err := s.c.RegisterHost(context.Background(), api.Host{Region: region, CPUs: 4, MemoryMB: 4096, Disk: &api.HostDisk{FreeBytes: free}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sub, err := s.Store().Conn().Subscribe(store.VolumeSubject(h.ID), func(m *nats.Msg) {
		var req store.VolumeRequest
		_ = json.Unmarshal(m.Data, &req)
		b, _ := json.Marshal(agent.VolumeOp(context.Background(), s.Store().VolumeMoves, dir, req))
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return *h, dir
}

// TestVolumesBadInput: each bad volume or mount request is refused with
// a 4xx that says what was wrong and what to do, and writes nothing;
// what is right works, and a machine's destroy keeps its volume.
func TestVolumesBadInput(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "db"}); err != nil {
		t.Fatal(err)
	}
	iad, iadDir := volumeHost(t, s, "iad", 3<<30)
	volumeHost(t, s, "ams", 10<<30)

	// Volumes themselves.
	for _, tc := range []struct {
		req       api.CreateVolumeRequest
		code      int
		mentioned string
	}{
		{api.CreateVolumeRequest{Name: "Pg-Data", Region: "iad"}, 400, "lowercase letters, digits and underscores"},
		{api.CreateVolumeRequest{Name: "pg", Region: "xyz"}, 400, "unknown region"},
		{api.CreateVolumeRequest{Name: "pg", Region: "iad", SizeGB: 100000}, 400, "size_gb must be 1-500"},
		// Larger than the host's free disk (3 GiB).
		{api.CreateVolumeRequest{Name: "pg", Region: "iad", SizeGB: 4}, 422, "no host in region iad has room for a 4.0 GiB volume"},
		{api.CreateVolumeRequest{Name: "pg", Region: "iad", FSType: "xfs"}, 400, "volumes are ext4"},
		{api.CreateVolumeRequest{Name: "pg", Region: "iad", SnapshotID: "vs_nope"}, 404, "snapshot vs_nope not found"},
	} {
		_, err := s.c.CreateVolume(ctx, "db", tc.req)
		wantStatus(t, err, tc.code, tc.mentioned)
	}
	if vs, _ := s.c.ListVolumes(ctx, "db"); len(vs) != 0 {
		t.Fatalf("refused volumes left records: %+v", vs)
	}

	v, err := s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg", Region: "iad", SizeGB: 2})
	if err != nil {
		t.Fatal(err)
	}
	if v.Zone != iad.ID || v.State != api.VolumeCreated || v.AttachedMachineID != nil || v.SnapshotRetention != api.DefaultSnapshotDays || !v.AutoBackupEnabled {
		t.Errorf("volume: %+v", v)
	}
	if sz, err := volume.Size(filepath.Join(iadDir, "volumes", v.ID)); err != nil || sz != 2<<30 {
		t.Errorf("image on the host: %d bytes, %v; want 2 GiB", sz, err)
	}
	// Its 2 GiB are promised: 1 GiB is left on the host for volumes.
	_, err = s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg", Region: "iad", SizeGB: 2})
	wantStatus(t, err, 422, "has 1.0 GiB free for volumes")

	mc := func(vol, path string) api.MachineConfig {
		return api.MachineConfig{Image: "i", Mounts: []api.Mount{{Volume: vol, Path: path}}}
	}
	before := machineCount(t, s, "db")
	for _, tc := range []struct {
		region    string
		config    api.MachineConfig
		code      int
		mentioned string
	}{
		{"iad", mc("vol_0000000000000000", "/data"), 400, "does not exist in app db"},
		{"iad", mc("pg", "/data"), 400, "is not a volume id"},
		{"ams", mc(v.ID, "/data"), 400, "is in region iad, the machine in ams"},
		{"iad", mc(v.ID, "/"), 400, "clean absolute path other than /"},
		{"iad", mc(v.ID, "data"), 400, "clean absolute path"},
		{"iad", api.MachineConfig{Image: "i", Mounts: []api.Mount{{Volume: v.ID, Path: "/a"}, {Volume: v.ID, Path: "/b"}}}, 400, "mounts at most one"},
	} {
		_, err := s.c.CreateMachine(ctx, "db", api.CreateMachineRequest{Region: tc.region, Config: tc.config})
		wantStatus(t, err, tc.code, tc.mentioned)
	}
	if n := machineCount(t, s, "db"); n != before {
		t.Fatalf("refused mounts left machines: %d, want %d", n, before)
	}

	// Right: placed on the volume's host, with no region asked for.
	m1, err := s.c.CreateMachine(ctx, "db", api.CreateMachineRequest{Config: mc(v.ID, "/data")})
	if err != nil {
		t.Fatal(err)
	}
	if m1.HostID != iad.ID || m1.Region != "iad" || m1.Config.Mounts[0].Name != "pg" {
		t.Errorf("machine with the volume: host %s region %s mounts %+v; want host %s", m1.HostID, m1.Region, m1.Config.Mounts, iad.ID)
	}
	// One volume, one machine.
	_, err = s.c.CreateMachine(ctx, "db", api.CreateMachineRequest{Region: "iad", Config: mc(v.ID, "/data")})
	wantStatus(t, err, 409, "attached to machine "+m1.ID)
	_, err = s.c.DestroyVolume(ctx, "db", v.ID)
	wantStatus(t, err, 409, "destroy the machine first")
	// An update in place keeps it (a deploy).
	if _, err := s.c.UpdateMachine(ctx, "db", m1.ID, api.CreateMachineRequest{Config: mc(v.ID, "/var/lib/data")}); err != nil {
		t.Fatalf("update in place on the same volume: %v", err)
	}
	if got, _ := s.c.GetVolume(ctx, "db", v.ID); got == nil || got.AttachedMachineID == nil || *got.AttachedMachineID != m1.ID {
		t.Errorf("volume after the update: %+v", got)
	}

	// The machine goes (its host removes the spec once destroyed): the
	// volume stays, free for another machine.
	if err := s.c.DestroyMachine(ctx, "db", m1.ID, true); err != nil {
		t.Fatal(err)
	}
	_ = store.Delete(ctx, s.Store().Machines, store.MachineKey("db", m1.ID))
	got, err := s.c.GetVolume(ctx, "db", v.ID)
	if err != nil || got.AttachedMachineID != nil {
		t.Fatalf("volume after its machine's destroy: %+v, %v", got, err)
	}
	if _, err := os.Stat(volume.Image(filepath.Join(iadDir, "volumes", v.ID))); err != nil {
		t.Errorf("the image went with the machine: %v", err)
	}

	// Extend: only up, within the host's room.
	_, err = s.c.ExtendVolume(ctx, "db", v.ID, 2)
	wantStatus(t, err, 400, "only grow")
	_, err = s.c.ExtendVolume(ctx, "db", v.ID, 5)
	wantStatus(t, err, 422, "free for volumes")
	ext, err := s.c.ExtendVolume(ctx, "db", v.ID, 3)
	if err != nil || ext.Volume.SizeGB != 3 || ext.NeedsRestart {
		t.Fatalf("extend to 3 GB: %+v, %v", ext, err)
	}
	if sz, _ := volume.Size(filepath.Join(iadDir, "volumes", v.ID)); sz != 3<<30 {
		t.Errorf("image after extend: %d bytes", sz)
	}

	// Snapshots: restored only in their region, at least their size.
	snap, err := s.c.CreateVolumeSnapshot(ctx, "db", v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ss, err := s.c.ListVolumeSnapshots(ctx, "db", v.ID); err != nil || len(ss) != 1 || ss[0].ID != snap.ID || ss[0].VolumeSize != 3<<30 {
		t.Errorf("snapshots: %+v, %v", ss, err)
	}
	_, err = s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg", Region: "ams", SnapshotID: snap.ID})
	wantStatus(t, err, 400, "snapshot "+snap.ID+" is in region iad")
	_, err = s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg", Region: "iad", SnapshotID: snap.ID, SizeGB: 1})
	wantStatus(t, err, 400, "smaller than the 3 GB")

	// Its host has no room left (the 3 GB volume): restored, the snapshot
	// moves to another host of the region, through the store, whole.
	iad2, iad2Dir := volumeHost(t, s, "iad", 10<<30)
	moved, err := s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "pg", Region: "iad", SnapshotID: snap.ID})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Zone != iad2.ID || moved.SizeGB != 3 {
		t.Errorf("restored volume: %+v; want 3 GB on %s", moved, iad2.ID)
	}
	sameFile(t, filepath.Join(iadDir, "volume-snapshots", snap.ID+".ext4"), volume.Image(filepath.Join(iad2Dir, "volumes", moved.ID)))
	if _, err := s.Store().VolumeMoves.GetInfo(ctx, snap.ID); err == nil {
		t.Errorf("the moved snapshot is still in the move store")
	}

	// Daily snapshots: one a day after the last, those past the
	// retention (5 days) expired, from their host too.
	now := time.Now().UTC()
	if err := s.volumeSnapshotRound(ctx, now.Add(25*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.volumeSnapshotRound(ctx, now.Add(26*time.Hour)); err != nil {
		t.Fatal(err)
	}
	ss, _ := s.c.ListVolumeSnapshots(ctx, "db", v.ID)
	if len(ss) != 2 || !ss[1].Scheduled {
		t.Fatalf("after a day: %+v; want the manual snapshot and one daily", ss)
	}
	if err := s.volumeSnapshotRound(ctx, now.Add(5*24*time.Hour+2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	ss, _ = s.c.ListVolumeSnapshots(ctx, "db", v.ID)
	if len(ss) != 2 || ss[0].ID == snap.ID || !ss[0].Scheduled || !ss[1].Scheduled {
		t.Fatalf("after 5 days: %+v; want the manual one expired and two daily", ss)
	}
	if _, err := os.Stat(filepath.Join(iadDir, "volume-snapshots", snap.ID+".ext4")); !os.IsNotExist(err) {
		t.Errorf("expired snapshot's file: %v", err)
	}

	// A running microVM's volume is its disk: not copied (the host cannot
	// freeze it).
	vm, err := s.c.CreateMachine(ctx, "db", api.CreateMachineRequest{Config: api.MachineConfig{Image: "i", Guest: api.Guest{Runtime: "microvm"}, Mounts: []api.Mount{{Volume: v.ID, Path: "/data"}}}})
	if err != nil {
		t.Fatalf("a microVM with the volume: %v", err)
	}
	_, err = s.c.CreateVolumeSnapshot(ctx, "db", v.ID)
	wantStatus(t, err, 409, "stop it first")
	_, err = s.c.CreateVolume(ctx, "db", api.CreateVolumeRequest{Name: "copy", Region: "iad", SourceVolumeID: v.ID})
	wantStatus(t, err, 409, "disk of microVM "+vm.ID)
	_ = store.Delete(ctx, s.Store().Machines, store.MachineKey("db", vm.ID))

	// Destroyed, it is gone from the host too; unknown ids are 404.
	if _, err := s.c.DestroyVolume(ctx, "db", v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(iadDir, "volumes", v.ID)); !os.IsNotExist(err) {
		t.Errorf("volume dir after destroy: %v", err)
	}
	_, err = s.c.GetVolume(ctx, "db", v.ID)
	wantStatus(t, err, 404, "not found in app db")
	_, err = s.c.GetVolume(ctx, "db", "../etc")
	wantStatus(t, err, 400, "not valid")
	if !strings.HasPrefix(snap.ID, "vs_") {
		t.Errorf("snapshot id %q", snap.ID)
	}
}

// sameFile fails unless a and b have the same size, the same data
// extents and the same bytes in them (holes read as zeros in both; b as
// sparse as a).
func sameFile(t *testing.T, a, b string) {
	t.Helper()
	da, sa := extentsDigest(t, a)
	db, sb := extentsDigest(t, b)
	if sa != sb || da != db {
		t.Fatalf("%s (%d bytes, extents %x) and %s (%d bytes, extents %x) differ", a, sa, da[:8], b, sb, db[:8])
	}
}

func extentsDigest(t *testing.T, path string) ([32]byte, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	h := sha256.New()
	fd := int(f.Fd())
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err != nil {
			break // ENXIO: only a hole is left
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%d+%d:", data, hole-data)
		if _, err := io.Copy(h, io.NewSectionReader(f, data, hole-data)); err != nil {
			t.Fatal(err)
		}
		off = hole
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, fi.Size()
}

// TestVolumeOpWaitsWithinTheHostsReplyWindow: the server waits for a
// host's volume work no longer than the host may answer (NATS drops an
// answer sent after store.HostReplyWindow), so a slow snapshot's answer
// reaches the server instead of being lost.
func TestVolumeOpWaitsWithinTheHostsReplyWindow(t *testing.T) {
	if volumeOpTimeout >= store.HostReplyWindow {
		t.Errorf("the server waits %s for a volume operation, but a host may answer only within %s", volumeOpTimeout, store.HostReplyWindow)
	}
}
