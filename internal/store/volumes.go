package store

import (
	"time"

	"github.com/perchhq/perch/internal/api"
)

// ObjectVolumeMoves is the object store a snapshot crosses from its host
// to another host of its region (compressed, deleted once restored; a
// TTL sweeps what a failed move left).
const ObjectVolumeMoves = "perch_volume_moves"

// BucketVolumes holds volumes, key "<app>.<id>", and their snapshots,
// key "<app>.<volume id>.<snapshot id>" (docs/volumes.md).
const BucketVolumes = "perch_volumes"

// VolumeRecord is a volume: written by the control plane; the data lives
// on HostID, in its agent's state dir.
type VolumeRecord struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	App    string `json:"app"`
	Region string `json:"region"`
	HostID string `json:"host_id"`
	State  string `json:"state"`
	SizeGB int    `json:"size_gb"`
	// SizeBytes is the image's size: SizeGB GiB (tests set it smaller).
	SizeBytes         int64 `json:"size_bytes"`
	SnapshotRetention int   `json:"snapshot_retention"`
	AutoBackupEnabled bool  `json:"auto_backup_enabled"`
	// FromSnapshot or FromVolume: the image starts as a copy of that
	// snapshot or volume (both on HostID) instead of empty.
	FromSnapshot string    `json:"from_snapshot,omitempty"`
	FromVolume   string    `json:"from_volume,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
}

// Key is the volume's key in perch_volumes.
func (v *VolumeRecord) Key() string { return VolumeKey(v.App, v.ID) }

// VolumeKey is the key of volume id of app.
func VolumeKey(app, id string) string { return app + "." + id }

// SnapshotRecord is a volume snapshot: a copy of the image on HostID.
type SnapshotRecord struct {
	api.VolumeSnapshot
	App    string `json:"app"`
	HostID string `json:"host_id"`
	Region string `json:"region"`
}

// Key is the snapshot's key in perch_volumes.
func (s *SnapshotRecord) Key() string { return s.App + "." + s.VolumeID + "." + s.ID }

// VolumeSubject is the core NATS subject on which host hostID does what a
// volume needs on its disk (VolumeRequest), answering a VolumeReply.
func VolumeSubject(hostID string) string { return "perch.volume." + hostID }

// Volume operations a host does.
const (
	VolumeOpCreate          = "create"
	VolumeOpExtend          = "extend"
	VolumeOpSnapshot        = "snapshot"
	VolumeOpDestroy         = "destroy"
	VolumeOpDestroySnapshot = "destroy_snapshot"
	// VolumeOpExport puts snapshot SnapshotID into ObjectVolumeMoves,
	// for a volume restored from it on another host.
	VolumeOpExport = "export"
)

// VolumeRequest asks a host to do Op on Volume; SnapshotID names the
// snapshot to take or destroy.
type VolumeRequest struct {
	Op         string       `json:"op"`
	Volume     VolumeRecord `json:"volume"`
	SnapshotID string       `json:"snapshot_id,omitempty"`
	// GuestDisk (extend): a microVM that may be running has the image as
	// its disk; only the image grows, its filesystem before the VM's next
	// start.
	GuestDisk bool `json:"guest_disk,omitempty"`
}

// VolumeReply answers it; Error is empty on success. Online (extend):
// the mounted filesystem grew at once. Bytes (snapshot): what the copy
// takes on disk.
type VolumeReply struct {
	Error  string `json:"error,omitempty"`
	Online bool   `json:"online,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
}
