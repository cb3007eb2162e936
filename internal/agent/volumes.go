package agent

import (
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/perchhq/perch/internal/api"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/volume"
	"golang.org/x/sys/unix"
)

// Volumes on this host (docs/volumes.md): each in
// <state>/volumes/<id>/volume.ext4, mounted at <state>/volumes/<id>/mnt
// while a runc machine uses it (bind-mounted into the machine);
// snapshots in <state>/volume-snapshots/<id>.ext4. Only `perch volumes
// destroy` removes a volume: a machine's destroy, the orphan sweep and a
// dev world's teardown only unmount.

var (
	volumeIDRE   = regexp.MustCompile(`^vol_[a-z0-9]{1,40}$`)
	snapshotIDRE = regexp.MustCompile(`^vs_[a-z0-9]{1,40}$`)
)

// volumeMu serialises what is done to volumes on this host (an image
// made, mounted, copied or removed), one thing at a time.
var volumeMu sync.Mutex

// guestWritten, in a volume's directory, marks an image a microVM had as
// its disk: e2fsck checks it before the host mounts it.
const guestWritten = "guest-written"

func volumeDir(stateDir, id string) string { return filepath.Join(stateDir, "volumes", id) }

// VolumeMountPoint is where volume id is mounted on the host.
func VolumeMountPoint(stateDir, id string) string {
	return filepath.Join(volumeDir(stateDir, id), "mnt")
}

func snapshotFile(stateDir, id string) string {
	return filepath.Join(stateDir, "volume-snapshots", id+".ext4")
}

// VolumeOp does on the host's disk in stateDir what req asks: what an
// agent answers on perch.volume.<host>. moves carries snapshots between
// hosts (store.ObjectVolumeMoves).
func VolumeOp(ctx context.Context, moves jetstream.ObjectStore, stateDir string, req store.VolumeRequest) store.VolumeReply {
	var rep store.VolumeReply
	v := req.Volume
	// The names become paths: only the control plane's own shapes.
	if !volumeIDRE.MatchString(v.ID) || (req.SnapshotID != "" && !snapshotIDRE.MatchString(req.SnapshotID)) ||
		(v.FromVolume != "" && !volumeIDRE.MatchString(v.FromVolume)) || (v.FromSnapshot != "" && !snapshotIDRE.MatchString(v.FromSnapshot)) {
		rep.Error = fmt.Sprintf("volume %q or snapshot %q is not a valid id", v.ID, req.SnapshotID)
		return rep
	}
	volumeMu.Lock()
	defer volumeMu.Unlock()
	dir, mnt := volumeDir(stateDir, v.ID), VolumeMountPoint(stateDir, v.ID)
	var err error
	switch req.Op {
	case store.VolumeOpCreate:
		err = ensureVolume(ctx, moves, stateDir, v)
	case store.VolumeOpExtend:
		if err = ensureVolume(ctx, moves, stateDir, v); err == nil && req.GuestDisk {
			err = volume.ExtendImage(dir, v.SizeBytes) // the guest's filesystem is not the host's to touch
		} else if err == nil {
			rep.Online, err = volume.Extend(dir, v.SizeBytes)
		}
	case store.VolumeOpSnapshot:
		if err = ensureVolume(ctx, moves, stateDir, v); err == nil {
			dst := snapshotFile(stateDir, req.SnapshotID)
			if err = volume.Snapshot(dir, mnt, dst); err == nil {
				rep.Bytes = allocated(dst)
			}
		}
	case store.VolumeOpDestroy:
		err = volume.Destroy(dir, mnt)
	case store.VolumeOpExport:
		err = exportSnapshot(ctx, moves, snapshotFile(stateDir, req.SnapshotID), req.SnapshotID)
	case store.VolumeOpDestroySnapshot:
		if err = os.Remove(snapshotFile(stateDir, req.SnapshotID)); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	default:
		err = fmt.Errorf("unknown volume operation %q", req.Op)
	}
	if err != nil {
		rep.Error = err.Error()
	}
	return rep
}

// ensureVolume makes volume v's image if this host has none yet: empty,
// or a copy of the snapshot or volume it comes from, at v's size.
func ensureVolume(ctx context.Context, moves jetstream.ObjectStore, stateDir string, v store.VolumeRecord) error {
	dir := volumeDir(stateDir, v.ID)
	if _, err := os.Stat(volume.Image(dir)); err == nil {
		return nil
	}
	switch {
	case v.FromSnapshot != "":
		src := snapshotFile(stateDir, v.FromSnapshot)
		if _, err := os.Stat(src); err != nil {
			// Taken on another host of the region: it came through
			// the move store (exportSnapshot).
			if err := importSnapshot(ctx, moves, v.FromSnapshot, volume.Image(dir)); err != nil {
				return fmt.Errorf("restore snapshot %s from another host: %w", v.FromSnapshot, err)
			}
			break
		}
		if err := volume.Restore(src, dir); err != nil {
			return fmt.Errorf("restore snapshot %s: %w", v.FromSnapshot, err)
		}
	case v.FromVolume != "":
		src := volumeDir(stateDir, v.FromVolume)
		if err := volume.Snapshot(src, VolumeMountPoint(stateDir, v.FromVolume), volume.Image(dir)); err != nil {
			return fmt.Errorf("fork volume %s: %w", v.FromVolume, err)
		}
	default:
		return volume.Create(dir, v.SizeBytes)
	}
	// A copy of what a microVM may have written: checked before the host
	// mounts it (mountVolumes).
	if err := os.WriteFile(filepath.Join(dir, guestWritten), nil, 0o600); err != nil {
		return err
	}
	_, err := volume.Extend(dir, v.SizeBytes) // unmounted: grows at once
	return err
}

func allocated(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// serveVolumes answers the control plane's volume requests for this host
// until ctx is done, after destroying the volumes whose destroy was
// asked for while the host was down.
func (a *Agent) serveVolumes(ctx context.Context) {
	sub, err := a.st.Conn().Subscribe(store.VolumeSubject(a.host.ID), func(m *nats.Msg) {
		var req store.VolumeRequest
		if json.Unmarshal(m.Data, &req) != nil || m.Reply == "" {
			return
		}
		go func() {
			rep := VolumeOp(ctx, a.st.Moves(ctx), a.cfg.StateDir, req)
			if rep.Error != "" {
				a.log.Warn("volume operation failed", "op", req.Op, "volume", req.Volume.ID, "err", rep.Error)
			} else {
				a.log.Info("volume operation", "op", req.Op, "volume", req.Volume.ID, "snapshot", req.SnapshotID)
			}
			b, _ := json.Marshal(rep)
			_ = m.Respond(b)
		}()
	})
	if err != nil {
		a.log.Warn("cannot answer volume requests; volumes of this host cannot be created, extended or snapshotted", "err", err)
		return
	}
	defer sub.Unsubscribe() //nolint:errcheck
	vols, err := store.List[store.VolumeRecord](ctx, a.st.Volumes, "*.*")
	if err == nil {
		for _, v := range vols {
			if v.HostID == a.host.ID && v.State == api.VolumeDestroying {
				if rep := VolumeOp(ctx, a.st.Moves(ctx), a.cfg.StateDir, store.VolumeRequest{Op: store.VolumeOpDestroy, Volume: v}); rep.Error == "" {
					_ = store.Delete(ctx, a.st.Volumes, v.Key())
					a.log.Info("volume destroyed (asked while the host was down)", "volume", v.ID)
				}
			}
		}
	}
	<-ctx.Done()
}

// mountVolumes makes (on first need) and mounts the spec's volumes on
// the host, returning them as the runtime's mounts. Mounted already (an
// adopted machine, a restart), it does nothing more.
func (w *worker) mountVolumes(ctx context.Context, spec store.MachineSpec) ([]perchrt.Mount, error) {
	var out []perchrt.Mount
	for _, m := range spec.Config.Mounts {
		if !volumeIDRE.MatchString(m.Volume) {
			return nil, fmt.Errorf("mount of %q: %q is not a volume id", m.Path, m.Volume)
		}
		dir := volumeDir(w.a.cfg.StateDir, m.Volume)
		if _, err := os.Stat(volume.Image(dir)); err != nil {
			v, _, err := store.Get[store.VolumeRecord](ctx, w.a.st.Volumes, store.VolumeKey(spec.App, m.Volume))
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
			}
			volumeMu.Lock()
			err = ensureVolume(ctx, w.a.st.Moves(ctx), w.a.cfg.StateDir, v)
			volumeMu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
			}
		}
		guestMark := filepath.Join(dir, guestWritten)
		if spec.Config.Guest.Runtime == "microvm" {
			// The image is the VM's disk: never mounted on the host too.
			// Marked: the guest's kernel wrote it, so the host's checks it
			// before it ever mounts it (below).
			if err := os.WriteFile(guestMark, nil, 0o600); err != nil {
				return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
			}
			// The VM is not running yet: an extend's filesystem growth
			// is done now (e2fsck checks it first).
			volumeMu.Lock()
			err := volume.Grow(dir)
			volumeMu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
			}
			out = append(out, perchrt.Mount{Image: volume.Image(dir), Destination: m.Path})
			continue
		}
		mnt := VolumeMountPoint(w.a.cfg.StateDir, m.Volume)
		volumeMu.Lock()
		var err error
		if _, serr := os.Stat(guestMark); serr == nil {
			if err = volume.Check(dir); err == nil {
				err = os.Remove(guestMark)
			} else {
				err = fmt.Errorf("a microVM wrote it and e2fsck finds damage it cannot repair, so the host does not mount it: %w", err)
			}
		}
		if err == nil {
			err = volume.Mount(dir, mnt)
		}
		volumeMu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
		}
		out = append(out, perchrt.Mount{Source: mnt, Image: volume.Image(dir), Destination: m.Path})
	}
	if !slices.Equal(w.local.Volumes, volumeIDs(spec)) {
		w.unmountVolumes(ctx, spec) // what the previous config mounted and this one does not
		w.local.Volumes = volumeIDs(spec)
		if err := saveLocal(w.a.cfg.StateDir, w.id, w.local); err != nil {
			return nil, fmt.Errorf("save machine record: %w", err)
		}
	}
	return out, nil
}

// unmountVolumes unmounts the volumes this machine mounted that spec
// does not keep mounted (all of them once its process is gone).
func (w *worker) unmountVolumes(ctx context.Context, keep store.MachineSpec) {
	for _, id := range w.local.Volumes {
		if slices.Contains(volumeIDs(keep), id) {
			continue
		}
		volumeMu.Lock()
		err := volume.Unmount(VolumeMountPoint(w.a.cfg.StateDir, id))
		volumeMu.Unlock()
		if err != nil {
			w.log.Warn("unmount volume", "volume", id, "err", err)
		}
	}
}

// releaseVolumes unmounts every volume of the machine, whose process is
// gone (stopped or destroyed).
func (w *worker) releaseVolumes(ctx context.Context) {
	w.unmountVolumes(ctx, store.MachineSpec{})
}

func volumeIDs(spec store.MachineSpec) []string {
	var ids []string
	for _, m := range spec.Config.Mounts {
		ids = append(ids, m.Volume)
	}
	return ids
}

// sweepVolumeMounts unmounts the volumes mounted on this host that no
// machine of it mounts (their machine was destroyed while the agent was
// down). The volumes themselves stay.
func (a *Agent) sweepVolumeMounts() {
	a.mu.Lock()
	used := map[string]bool{}
	for _, w := range a.workers {
		spec, _ := w.current()
		for _, id := range volumeIDs(spec) {
			used[id] = true
		}
	}
	a.mu.Unlock()
	dirs, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "volumes"))
	for _, d := range dirs {
		if used[d.Name()] {
			continue
		}
		volumeMu.Lock()
		err := volume.Unmount(VolumeMountPoint(a.cfg.StateDir, d.Name()))
		volumeMu.Unlock()
		if err != nil {
			a.log.Warn("unmount volume of no machine", "volume", d.Name(), "err", err)
		}
	}
}

// unmountAllVolumes unmounts every volume under stateDir (a dev world's
// teardown), keeping their data.
func unmountAllVolumes(stateDir string) error {
	var errs []error
	dirs, _ := os.ReadDir(filepath.Join(stateDir, "volumes"))
	for _, d := range dirs {
		if err := volume.Unmount(VolumeMountPoint(stateDir, d.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// exportSnapshot puts the snapshot file into the move store under id:
// only its data (a sparse image is mostly holes), as extents
// (sparseStream), gzip-compressed.
func exportSnapshot(ctx context.Context, moves jetstream.ObjectStore, path, id string) error {
	if moves == nil {
		return errors.New("no store to move snapshots through")
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("export snapshot: %w", err)
	}
	defer f.Close()
	pr, pw := io.Pipe()
	go func() {
		zw, _ := gzip.NewWriterLevel(pw, gzip.BestSpeed)
		err := sparseStream(zw, f)
		if cerr := zw.Close(); err == nil {
			err = cerr
		}
		pw.CloseWithError(err)
	}()
	if _, err := moves.Put(ctx, jetstream.ObjectMeta{Name: id}, pr); err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("export snapshot %s: %w", id, err)
	}
	return nil
}

// sparseStream writes f as its size, then each data extent (offset,
// length, bytes), found with SEEK_DATA and SEEK_HOLE, then a zero length.
func sparseStream(w io.Writer, f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if err := binary.Write(w, binary.BigEndian, uint64(size)); err != nil {
		return err
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		if err := binary.Write(w, binary.BigEndian, [2]uint64{uint64(data), uint64(hole - data)}); err != nil {
			return err
		}
		if _, err := io.Copy(w, io.NewSectionReader(f, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return binary.Write(w, binary.BigEndian, [2]uint64{0, 0})
}

// importSnapshot writes the snapshot id from the move store into the
// image file dst, sparse as it was.
func importSnapshot(ctx context.Context, moves jetstream.ObjectStore, id, dst string) error {
	if moves == nil {
		return errors.New("no store to move snapshots through")
	}
	obj, err := moves.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("get %s: %w", id, err)
	}
	defer obj.Close()
	zr, err := gzip.NewReader(obj)
	if err != nil {
		return fmt.Errorf("read %s: %w", id, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	tmp := dst + ".new"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = readSparse(f, zr)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}

// readSparse writes what sparseStream wrote into f.
func readSparse(f *os.File, r io.Reader) error {
	var size uint64
	if err := binary.Read(r, binary.BigEndian, &size); err != nil {
		return err
	}
	if err := f.Truncate(int64(size)); err != nil {
		return err
	}
	for {
		var ext [2]uint64
		if err := binary.Read(r, binary.BigEndian, &ext); err != nil {
			return err
		}
		if ext[1] == 0 {
			return nil
		}
		if ext[0]+ext[1] > size {
			return fmt.Errorf("extent %d+%d past the image's %d bytes", ext[0], ext[1], size)
		}
		if _, err := io.Copy(io.NewOffsetWriter(f, int64(ext[0])), io.LimitReader(r, int64(ext[1]))); err != nil {
			return err
		}
	}
}
