package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"regexp"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

// Volumes (docs/volumes.md): records in perch_volumes, the data on one
// host, which does what the data needs when asked on
// perch.volume.<host> (agent volumes.go).

const (
	maxVolumeGB = 500 // Fly's limit
	gib         = int64(1) << 30
	// volumeOpTimeout bounds a host's answer: a snapshot copies the
	// image. Within store.HostReplyWindow, or the answer is dropped.
	volumeOpTimeout = 5 * time.Minute
)

var (
	volumeNameRE = regexp.MustCompile(`^[a-z0-9_]{1,30}$`) // Fly's rule
	volumeIDRE   = regexp.MustCompile(`^vol_[a-z0-9]{1,40}$`)
	snapshotIDRE = regexp.MustCompile(`^vs_[a-z0-9]{1,40}$`)
)

func newVolumeID() string   { return "vol_" + volHex(8) }
func newSnapshotID() string { return "vs_" + volHex(8) }

func volHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Server) volume(ctx context.Context, app, id string) (store.VolumeRecord, error) {
	if !volumeIDRE.MatchString(id) {
		return store.VolumeRecord{}, errf(http.StatusBadRequest, "volume id %q is not valid: volume ids look like vol_0123abcd; perch volumes list shows them", id)
	}
	if _, err := s.app(ctx, app); err != nil {
		return store.VolumeRecord{}, err
	}
	v, _, err := store.Get[store.VolumeRecord](ctx, s.st.Volumes, store.VolumeKey(app, id))
	if errors.Is(err, store.ErrNotFound) {
		return v, errf(http.StatusNotFound, "volume %s not found in app %s; perch volumes list shows its volumes", id, app)
	}
	return v, err
}

// attachedTo maps each volume id of app to the machine that mounts it
// (any machine with a spec, also one being destroyed: its host holds the
// mount until it is gone).
func (s *Server) attachedTo(ctx context.Context, app string) (map[string]string, error) {
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, app+".*")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range specs {
		for _, mt := range m.Config.Mounts {
			out[mt.Volume] = m.ID
		}
	}
	return out, nil
}

func (s *Server) volumeView(ctx context.Context, v store.VolumeRecord, attached map[string]string) api.Volume {
	out := api.Volume{
		ID: v.ID, Name: v.Name, App: v.App, State: v.State, SizeGB: v.SizeGB, Region: v.Region, Zone: v.HostID,
		FSType: "ext4", SnapshotRetention: v.SnapshotRetention, AutoBackupEnabled: v.AutoBackupEnabled,
		CreatedAt: v.CreatedAt, HostStatus: api.HostOK,
	}
	if id, ok := attached[v.ID]; ok {
		out.AttachedMachineID = &id
	}
	if h, _, err := store.Get[api.Host](ctx, s.st.Hosts, v.HostID); err != nil || h.Status != api.HostUp {
		out.HostStatus = api.HostUnreachable
	}
	return out
}

// volumeOp asks the volume's host to act on its disk.
func (s *Server) volumeOp(ctx context.Context, req store.VolumeRequest) (store.VolumeReply, error) {
	var rep store.VolumeReply
	h, _, err := store.Get[api.Host](ctx, s.st.Hosts, req.Volume.HostID)
	if err != nil || h.Status != api.HostUp {
		return rep, errf(http.StatusServiceUnavailable, "volume %s is on host %s, which is down; try again when it is back", req.Volume.ID, req.Volume.HostID)
	}
	b, err := json.Marshal(req)
	if err != nil {
		return rep, err
	}
	ctx, cancel := context.WithTimeout(ctx, volumeOpTimeout)
	defer cancel()
	msg, err := s.st.Conn().RequestWithContext(ctx, store.VolumeSubject(req.Volume.HostID), b)
	if err != nil {
		return rep, errf(http.StatusServiceUnavailable, "host %s did not answer for volume %s (%v); try again", req.Volume.HostID, req.Volume.ID, err)
	}
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		return rep, fmt.Errorf("host %s's answer: %w", req.Volume.HostID, err)
	}
	if rep.Error != "" {
		return rep, errf(http.StatusInternalServerError, "host %s could not %s volume %s: %s", req.Volume.HostID, req.Op, req.Volume.ID, rep.Error)
	}
	return rep, nil
}

func (s *Server) listVolumes(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	vols, err := store.List[store.VolumeRecord](ctx, s.st.Volumes, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	attached, err := s.attachedTo(ctx, a.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := []api.Volume{}
	for _, v := range vols {
		out = append(out, s.volumeView(ctx, v, attached))
	}
	slices.SortFunc(out, func(a, b api.Volume) int { return a.CreatedAt.Compare(b.CreatedAt) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v, err := s.volume(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	attached, err := s.attachedTo(ctx, v.App)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.volumeView(ctx, v, attached))
}

func (s *Server) createVolume(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.CreateVolumeRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	v, err := s.newVolume(ctx, a.Name, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("volume created", "app", a.Name, "volume", v.ID, "name", v.Name, "region", v.Region, "host", v.HostID, "size_gb", v.SizeGB)
	writeJSON(w, http.StatusOK, s.volumeView(ctx, v, nil))
}

// newVolume validates req, places the volume, writes its record and has
// its host make the image; nothing is left if that fails.
func (s *Server) newVolume(ctx context.Context, app string, req api.CreateVolumeRequest) (store.VolumeRecord, error) {
	var none store.VolumeRecord
	if !volumeNameRE.MatchString(req.Name) {
		return none, errf(http.StatusBadRequest, "volume name %q is not valid: use 1-30 lowercase letters, digits and underscores (e.g. pg_data)", req.Name)
	}
	if err := s.validateRegion(req.Region); err != nil {
		return none, err
	}
	if req.SizeGB < 0 || req.SizeGB > maxVolumeGB {
		return none, errf(http.StatusBadRequest, "size_gb must be 1-%d, got %d", maxVolumeGB, req.SizeGB)
	}
	if req.FSType != "" && req.FSType != "ext4" {
		return none, errf(http.StatusBadRequest, "fstype %q is not supported; volumes are ext4", req.FSType)
	}
	if req.SnapshotID != "" && req.SourceVolumeID != "" {
		return none, errf(http.StatusBadRequest, "give snapshot_id (restore a snapshot) or source_volume_id (fork a volume), not both")
	}
	now := time.Now().UTC()
	v := store.VolumeRecord{
		ID: newVolumeID(), Name: req.Name, App: app, Region: req.Region, State: api.VolumeCreated,
		SizeGB: req.SizeGB, SnapshotRetention: api.DefaultSnapshotDays, AutoBackupEnabled: true, CreatedAt: now,
	}
	if req.SnapshotRetention != nil {
		if *req.SnapshotRetention < 1 || *req.SnapshotRetention > 60 {
			return none, errf(http.StatusBadRequest, "snapshot_retention must be 1-60 days, got %d", *req.SnapshotRetention)
		}
		v.SnapshotRetention = *req.SnapshotRetention
	}
	if req.AutoBackupEnabled != nil {
		v.AutoBackupEnabled = *req.AutoBackupEnabled
	}
	// A copy lives on the host of what it copies, and is at least as big;
	// a snapshot is restored on its own host if that has room, else it
	// moves to another host of the region.
	var pinned string
	var snap store.SnapshotRecord
	minGB := 1
	switch {
	case req.SnapshotID != "":
		var err error
		snap, err = s.snapshotByID(ctx, app, req.SnapshotID)
		if err != nil {
			return none, err
		}
		if snap.Region != req.Region {
			return none, errf(http.StatusBadRequest, "snapshot %s is in region %s; restore it there (--region %s): snapshots move between hosts of a region, not between regions", snap.ID, snap.Region, snap.Region)
		}
		pinned, v.FromSnapshot = snap.HostID, snap.ID
		minGB = int((snap.VolumeSize + gib - 1) / gib)
	case req.SourceVolumeID != "":
		src, err := s.volume(ctx, app, req.SourceVolumeID)
		if err != nil {
			return none, err
		}
		if src.Region != req.Region {
			return none, errf(http.StatusBadRequest, "volume %s is in region %s; fork it there (--region %s)", src.ID, src.Region, src.Region)
		}
		if err := s.copyable(ctx, src); err != nil {
			return none, err
		}
		pinned, v.FromVolume = src.HostID, src.ID
		minGB = src.SizeGB
	}
	if v.SizeGB == 0 {
		v.SizeGB = minGB
	}
	if v.SizeGB < minGB {
		return none, errf(http.StatusBadRequest, "size_gb %d is smaller than the %d GB it is copied from; ask for %d or more", v.SizeGB, minGB, minGB)
	}
	v.SizeBytes = int64(v.SizeGB) * gib

	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		return none, err
	}
	err := s.appOpen(ctx, app)
	var hosts []api.Host
	var vols []store.VolumeRecord
	if err == nil {
		hosts, err = s.hosts(ctx)
	}
	if err == nil {
		vols, err = store.List[store.VolumeRecord](ctx, s.st.Volumes, "*.*")
	}
	if err == nil && snap.ID != "" {
		// Its own host if it is up with room, else any with room.
		i := slices.IndexFunc(hosts, func(h api.Host) bool { return h.ID == pinned })
		if i >= 0 && hosts[i].Status == api.HostUp && scheduler.HasRoom(hosts[i], v.SizeBytes, vols) == nil {
			v.HostID = pinned
		} else {
			v.HostID, err = scheduler.PlaceVolume(scheduler.VolumeRequest{Region: v.Region, Name: v.Name, Bytes: v.SizeBytes}, hosts, vols)
		}
	} else if err == nil && pinned == "" {
		v.HostID, err = scheduler.PlaceVolume(scheduler.VolumeRequest{Region: v.Region, Name: v.Name, Bytes: v.SizeBytes}, hosts, vols)
	} else if err == nil {
		v.HostID = pinned
		i := slices.IndexFunc(hosts, func(h api.Host) bool { return h.ID == pinned })
		if i < 0 || hosts[i].Status != api.HostUp {
			err = errf(http.StatusServiceUnavailable, "what the volume copies is on host %s, which is down; try again when it is back", pinned)
		} else {
			err = scheduler.HasRoom(hosts[i], v.SizeBytes, vols)
		}
	}
	if err == nil {
		err = s.grantVolume(v.HostID, v.Key()) // hostauth.go
	}
	if err == nil {
		_, err = store.Create(ctx, s.st.Volumes, v.Key(), v)
	}
	s.placeMu.Unlock()
	if err != nil {
		return none, err
	}
	if snap.ID != "" && v.HostID != snap.HostID {
		// The snapshot moves: its host puts it into the move store, the
		// new volume's host restores from there.
		exp := store.VolumeRequest{Op: store.VolumeOpExport, Volume: store.VolumeRecord{ID: snap.VolumeID, App: app, HostID: snap.HostID}, SnapshotID: snap.ID}
		if _, err := s.volumeOp(ctx, exp); err != nil {
			_ = store.Delete(context.WithoutCancel(ctx), s.st.Volumes, v.Key())
			return none, fmt.Errorf("move snapshot %s from host %s to %s: %w", snap.ID, snap.HostID, v.HostID, err)
		}
		defer s.st.VolumeMoves.Delete(context.WithoutCancel(ctx), snap.ID) //nolint:errcheck // the bucket's TTL sweeps it
		s.log.Info("snapshot moved", "snapshot", snap.ID, "from", snap.HostID, "to", v.HostID)
	}
	if _, err := s.volumeOp(ctx, store.VolumeRequest{Op: store.VolumeOpCreate, Volume: v}); err != nil {
		_ = store.Delete(context.WithoutCancel(ctx), s.st.Volumes, v.Key())
		return none, err
	}
	return v, nil
}

func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v, err := s.volume(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.placeMu.LockCtx(ctx, s); err != nil { // no machine gets the volume while it goes
		s.fail(w, r, err)
		return
	}
	attached, err := s.attachedTo(ctx, v.App)
	if err == nil {
		if m, ok := attached[v.ID]; ok {
			err = errf(http.StatusConflict, "volume %s is attached to machine %s; destroy the machine first (the volume stays until you destroy it)", v.ID, m)
		}
	}
	if err == nil {
		v, err = store.Modify(ctx, s.st.Volumes, v.Key(), func(rec *store.VolumeRecord) error {
			rec.State = api.VolumeDestroying
			return nil
		})
	}
	s.placeMu.Unlock()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// If the host is down the record stays pending_destroy: the host
	// destroys it when it is back (agent volumes.go).
	if _, err := s.volumeOp(ctx, store.VolumeRequest{Op: store.VolumeOpDestroy, Volume: v}); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := store.Delete(ctx, s.st.Volumes, v.Key()); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("volume destroyed", "app", v.App, "volume", v.ID)
	out := s.volumeView(ctx, v, nil)
	out.State = api.VolumeDestroyed
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) extendVolume(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v, err := s.volume(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.ExtendVolumeRequest
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.SizeGB <= v.SizeGB || req.SizeGB > maxVolumeGB {
		s.fail(w, r, errf(http.StatusBadRequest, "size_gb must be more than the volume's %d GB and at most %d, got %d: volumes only grow", v.SizeGB, maxVolumeGB, req.SizeGB))
		return
	}
	more := int64(req.SizeGB)*gib - v.SizeBytes
	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	h, _, err := store.Get[api.Host](ctx, s.st.Hosts, v.HostID)
	var vols []store.VolumeRecord
	if err == nil {
		vols, err = store.List[store.VolumeRecord](ctx, s.st.Volumes, "*.*")
	}
	if err == nil {
		err = scheduler.HasRoom(h, more, vols)
	}
	if err == nil {
		v, err = store.Modify(ctx, s.st.Volumes, v.Key(), func(rec *store.VolumeRecord) error {
			rec.SizeGB, rec.SizeBytes = req.SizeGB, rec.SizeBytes+more
			return nil
		})
	}
	s.placeMu.Unlock()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	guest := s.copyable(ctx, v) != nil // a running microVM's disk: only the image grows now
	rep, err := s.volumeOp(ctx, store.VolumeRequest{Op: store.VolumeOpExtend, Volume: v, GuestDisk: guest})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	attached, err := s.attachedTo(ctx, v.App)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	_, isAttached := attached[v.ID]
	writeJSON(w, http.StatusOK, api.ExtendVolumeResponse{Volume: s.volumeView(ctx, v, attached), NeedsRestart: isAttached && !rep.Online})
}

func (s *Server) snapshotByID(ctx context.Context, app, id string) (store.SnapshotRecord, error) {
	if !snapshotIDRE.MatchString(id) {
		return store.SnapshotRecord{}, errf(http.StatusBadRequest, "snapshot id %q is not valid: snapshot ids look like vs_0123abcd; perch volumes snapshots list VOLUME shows them", id)
	}
	snaps, err := store.List[store.SnapshotRecord](ctx, s.st.Volumes, app+".*."+id)
	if err != nil {
		return store.SnapshotRecord{}, err
	}
	if len(snaps) == 0 {
		return store.SnapshotRecord{}, errf(http.StatusNotFound, "snapshot %s not found in app %s; perch volumes snapshots list VOLUME shows a volume's snapshots", id, app)
	}
	return snaps[0], nil
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	app, id := r.PathValue("app"), r.PathValue("id")
	if _, err := s.app(ctx, app); err != nil {
		s.fail(w, r, err)
		return
	}
	if !volumeIDRE.MatchString(id) {
		s.fail(w, r, errf(http.StatusBadRequest, "volume id %q is not valid: volume ids look like vol_0123abcd", id))
		return
	}
	// A destroyed volume's snapshots are listed until they expire.
	snaps, err := store.List[store.SnapshotRecord](ctx, s.st.Volumes, app+"."+id+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if len(snaps) == 0 {
		if _, err := s.volume(ctx, app, id); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	out := []api.VolumeSnapshot{}
	for _, sn := range snaps {
		out = append(out, sn.VolumeSnapshot)
	}
	slices.SortFunc(out, func(a, b api.VolumeSnapshot) int { return a.CreatedAt.Compare(b.CreatedAt) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v, err := s.volume(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	sn, err := s.snapshot(ctx, v, false, time.Now().UTC())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sn.VolumeSnapshot)
}

// snapshot has the volume's host copy its image (frozen while it copies)
// and records the copy.
func (s *Server) snapshot(ctx context.Context, v store.VolumeRecord, scheduled bool, at time.Time) (store.SnapshotRecord, error) {
	if v.State != api.VolumeCreated {
		return store.SnapshotRecord{}, errf(http.StatusConflict, "volume %s is %s", v.ID, v.State)
	}
	if err := s.copyable(ctx, v); err != nil {
		return store.SnapshotRecord{}, err
	}
	sn := store.SnapshotRecord{
		VolumeSnapshot: api.VolumeSnapshot{
			ID: newSnapshotID(), VolumeID: v.ID, Status: api.VolumeCreated, VolumeSize: v.SizeBytes,
			RetentionDays: v.SnapshotRetention, CreatedAt: at, Scheduled: scheduled,
		},
		App: v.App, HostID: v.HostID, Region: v.Region,
	}
	rep, err := s.volumeOp(ctx, store.VolumeRequest{Op: store.VolumeOpSnapshot, Volume: v, SnapshotID: sn.ID})
	if err != nil {
		return sn, err
	}
	sn.Size = rep.Bytes
	if _, err := store.Create(ctx, s.st.Volumes, sn.Key(), sn); err != nil {
		return sn, err
	}
	s.log.Info("volume snapshot taken", "app", v.App, "volume", v.ID, "snapshot", sn.ID, "bytes", sn.Size, "scheduled", scheduled)
	return sn, nil
}

// copyable refuses to copy a volume a running microVM has as its disk:
// the host cannot freeze the guest's filesystem, so the copy would not be
// consistent. A runc machine's volume is frozen for the copy (fsfreeze).
func (s *Server) copyable(ctx context.Context, v store.VolumeRecord) error {
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, v.App+".*")
	if err != nil {
		return err
	}
	for _, m := range specs {
		for _, mt := range m.Config.Mounts {
			if mt.Volume == v.ID && m.Config.Guest.Runtime == "microvm" && m.Desired != store.DesireStopped {
				return errf(http.StatusConflict, "volume %s is the disk of microVM %s, which runs; stop it first (perch machine stop %s), then snapshot or fork the volume", v.ID, m.ID, m.ID)
			}
		}
	}
	return nil
}

// snapshotInterval is how often a volume with auto_backup_enabled is
// snapshotted; snapshots older than its snapshot_retention days go.
const snapshotInterval = 24 * time.Hour

// runVolumeSnapshots takes the daily snapshots and expires old ones,
// under the "volume-snapshots" lease (one control plane does it).
func (s *Server) runVolumeSnapshots(ctx context.Context) {
	log := s.log.With("component", "volume-snapshots")
	_ = s.st.RunHeld(ctx, "volume-snapshots", 15*time.Second, log, func(ctx context.Context) {
		t := time.NewTicker(10 * time.Minute)
		defer t.Stop()
		for {
			if err := s.volumeSnapshotRound(ctx, time.Now().UTC()); err != nil && ctx.Err() == nil {
				log.Warn("snapshot round failed", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
}

// volumeSnapshotRound snapshots every volume whose last scheduled
// snapshot is a day old, and destroys snapshots past their retention.
func (s *Server) volumeSnapshotRound(ctx context.Context, now time.Time) error {
	all, err := store.List[json.RawMessage](ctx, s.st.Volumes, ">")
	if err != nil {
		return err
	}
	var vols []store.VolumeRecord
	last := map[string]time.Time{}
	var errs []error
	for _, raw := range all {
		var probe struct {
			VolumeID string `json:"volume_id"`
		}
		_ = json.Unmarshal(raw, &probe)
		if probe.VolumeID == "" {
			var v store.VolumeRecord
			if json.Unmarshal(raw, &v) == nil {
				vols = append(vols, v)
			}
			continue
		}
		var sn store.SnapshotRecord
		if json.Unmarshal(raw, &sn) != nil {
			continue
		}
		if sn.Scheduled && sn.CreatedAt.After(last[sn.VolumeID]) {
			last[sn.VolumeID] = sn.CreatedAt
		}
		if now.Sub(sn.CreatedAt) > time.Duration(max(sn.RetentionDays, 1))*24*time.Hour {
			err := s.expireSnapshot(ctx, sn)
			errs = append(errs, err)
		}
	}
	for _, v := range vols {
		if !v.AutoBackupEnabled || v.State != api.VolumeCreated {
			continue
		}
		since := v.CreatedAt // the first one a day after creation
		if l, had := last[v.ID]; had {
			since = l
		}
		if now.Sub(since) < snapshotInterval {
			continue
		}
		if _, err := s.snapshot(ctx, v, true, now); err != nil {
			errs = append(errs, fmt.Errorf("snapshot %s: %w", v.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) expireSnapshot(ctx context.Context, sn store.SnapshotRecord) error {
	v := store.VolumeRecord{ID: sn.VolumeID, App: sn.App, HostID: sn.HostID}
	if _, err := s.volumeOp(ctx, store.VolumeRequest{Op: store.VolumeOpDestroySnapshot, Volume: v, SnapshotID: sn.ID}); err != nil {
		return fmt.Errorf("expire snapshot %s: %w", sn.ID, err)
	}
	return store.Delete(ctx, s.st.Volumes, sn.Key())
}

// resolveMounts checks a machine config's mounts and says which host
// the machine must be on ("" for no mounts) and its region. machineID is
// the machine being updated ("" for a new one); region the one asked
// for ("" for any).
func (s *Server) resolveMounts(ctx context.Context, app, machineID, region string, c *api.MachineConfig) (host, volRegion string, err error) {
	if len(c.Mounts) == 0 {
		return "", "", nil
	}
	if len(c.Mounts) > 1 {
		return "", "", errf(http.StatusBadRequest, "config.mounts has %d volumes; a machine mounts at most one (as on Fly)", len(c.Mounts))
	}
	m := &c.Mounts[0]
	if m.Path == "" || !path.IsAbs(m.Path) || path.Clean(m.Path) == "/" || path.Clean(m.Path) != m.Path {
		return "", "", errf(http.StatusBadRequest, "config.mounts[0].path %q must be a clean absolute path other than /, e.g. /data", m.Path)
	}
	if !volumeIDRE.MatchString(m.Volume) {
		return "", "", errf(http.StatusBadRequest, "config.mounts[0].volume %q is not a volume id (vol_...); perch volumes list shows the app's volumes, perch volumes create makes one", m.Volume)
	}
	v, _, err := store.Get[store.VolumeRecord](ctx, s.st.Volumes, store.VolumeKey(app, m.Volume))
	if errors.Is(err, store.ErrNotFound) {
		return "", "", errf(http.StatusBadRequest, "config.mounts[0].volume %s does not exist in app %s; perch volumes list shows its volumes, perch volumes create makes one", m.Volume, app)
	}
	if err != nil {
		return "", "", err
	}
	if v.State != api.VolumeCreated {
		return "", "", errf(http.StatusBadRequest, "config.mounts[0].volume %s is %s", v.ID, v.State)
	}
	if region != "" && v.Region != region {
		return "", "", errf(http.StatusBadRequest, "config.mounts[0].volume %s is in region %s, the machine in %s; a volume is mounted only in its own region: create a volume in %s", v.ID, v.Region, region, region)
	}
	attached, err := s.attachedTo(ctx, app)
	if err != nil {
		return "", "", err
	}
	if other, ok := attached[v.ID]; ok && other != machineID {
		return "", "", errf(http.StatusConflict, "volume %s is attached to machine %s; a volume is mounted by one machine at a time: destroy %s first (its volume stays) or create another volume", v.ID, other, other)
	}
	m.Name, m.SizeGB = v.Name, v.SizeGB
	return v.HostID, v.Region, nil
}
