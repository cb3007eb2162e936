package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"syscall"

	"github.com/nats-io/nats.go"

	"github.com/perchhq/perch/internal/api"
	perchrt "github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/volume"
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

func volumeDir(stateDir, id string) string { return filepath.Join(stateDir, "volumes", id) }

// VolumeMountPoint is where volume id is mounted on the host.
func VolumeMountPoint(stateDir, id string) string {
	return filepath.Join(volumeDir(stateDir, id), "mnt")
}

func snapshotFile(stateDir, id string) string {
	return filepath.Join(stateDir, "volume-snapshots", id+".ext4")
}

// VolumeOp does on the host's disk in stateDir what req asks: what an
// agent answers on perch.volume.<host>.
func VolumeOp(stateDir string, req store.VolumeRequest) store.VolumeReply {
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
		err = ensureVolume(stateDir, v)
	case store.VolumeOpExtend:
		if err = ensureVolume(stateDir, v); err == nil {
			rep.Online, err = volume.Extend(dir, v.SizeBytes)
		}
	case store.VolumeOpSnapshot:
		if err = ensureVolume(stateDir, v); err == nil {
			dst := snapshotFile(stateDir, req.SnapshotID)
			if err = volume.Snapshot(dir, mnt, dst); err == nil {
				rep.Bytes = allocated(dst)
			}
		}
	case store.VolumeOpDestroy:
		err = volume.Destroy(dir, mnt)
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
func ensureVolume(stateDir string, v store.VolumeRecord) error {
	dir := volumeDir(stateDir, v.ID)
	if _, err := os.Stat(volume.Image(dir)); err == nil {
		return nil
	}
	switch {
	case v.FromSnapshot != "":
		if err := volume.Restore(snapshotFile(stateDir, v.FromSnapshot), dir); err != nil {
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
			rep := VolumeOp(a.cfg.StateDir, req)
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
				if rep := VolumeOp(a.cfg.StateDir, store.VolumeRequest{Op: store.VolumeOpDestroy, Volume: v}); rep.Error == "" {
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
			err = ensureVolume(w.a.cfg.StateDir, v)
			volumeMu.Unlock()
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", m.Volume, err)
			}
		}
		if spec.Config.Guest.Runtime == "microvm" {
			// The image is the VM's disk: never mounted on the host too.
			out = append(out, perchrt.Mount{Image: volume.Image(dir), Destination: m.Path})
			continue
		}
		mnt := VolumeMountPoint(w.a.cfg.StateDir, m.Volume)
		volumeMu.Lock()
		err := volume.Mount(dir, mnt)
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
