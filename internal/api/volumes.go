package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Mount attaches a volume to a machine, as Fly's machine config shapes
// it (config.mounts[]): Volume is the volume's id, Path where the
// machine sees it. Name is the volume's name, which Fly's clients also
// send; the server fills it.
type Mount struct {
	Volume string `json:"volume"`
	Path   string `json:"path"`
	Name   string `json:"name,omitempty"`
	// SizeGB is Fly's; the volume's own size is what counts. Read only.
	SizeGB int `json:"size_gb,omitempty"`
}

// Volume states, as Fly's API shows them.
const (
	VolumeCreated       = "created"
	VolumeDestroying    = "pending_destroy"
	VolumeDestroyed     = "destroyed"
	DefaultSnapshotDays = 5
)

// Volume is persistent storage on one host of a region (docs/volumes.md),
// shaped as Fly's Machines API's volume.
type Volume struct {
	ID                string    `json:"id"`
	Name              string    `json:"name"`
	App               string    `json:"app_name,omitempty"`
	State             string    `json:"state"`
	SizeGB            int       `json:"size_gb"`
	Region            string    `json:"region"`
	Zone              string    `json:"zone"` // the host's id
	Encrypted         bool      `json:"encrypted"`
	AttachedMachineID *string   `json:"attached_machine_id"`
	FSType            string    `json:"fstype"`
	HostStatus        string    `json:"host_status,omitempty"`
	SnapshotRetention int       `json:"snapshot_retention"`
	AutoBackupEnabled bool      `json:"auto_backup_enabled"`
	CreatedAt         time.Time `json:"created_at"`
}

// CreateVolumeRequest is POST /v1/apps/{app}/volumes, Fly's shape.
// SnapshotID restores a snapshot into the new volume; SourceVolumeID
// forks (copies) a volume of the app.
type CreateVolumeRequest struct {
	Name              string `json:"name"`
	Region            string `json:"region"`
	SizeGB            int    `json:"size_gb,omitempty"`
	SnapshotID        string `json:"snapshot_id,omitempty"`
	SourceVolumeID    string `json:"source_volume_id,omitempty"`
	SnapshotRetention *int   `json:"snapshot_retention,omitempty"`
	AutoBackupEnabled *bool  `json:"auto_backup_enabled,omitempty"`
	Encrypted         *bool  `json:"encrypted,omitempty"`
	FSType            string `json:"fstype,omitempty"`
	RequireUniqueZone *bool  `json:"require_unique_zone,omitempty"`
}

// ExtendVolumeRequest is PUT .../volumes/{id}/extend.
type ExtendVolumeRequest struct {
	SizeGB int `json:"size_gb"`
}

// ExtendVolumeResponse answers it, as Fly does: NeedsRestart says the
// attached machine sees the new size only after a restart.
type ExtendVolumeResponse struct {
	Volume       Volume `json:"volume"`
	NeedsRestart bool   `json:"needs_restart"`
}

// VolumeSnapshot is a copy of a volume's data at one time, kept on the
// volume's host (docs/volumes.md), shaped as Fly's.
type VolumeSnapshot struct {
	ID            string    `json:"id"`
	VolumeID      string    `json:"volume_id,omitempty"`
	Status        string    `json:"status"` // "created" or "failed"
	Size          int64     `json:"size"`   // bytes the copy takes on disk
	VolumeSize    int64     `json:"volume_size"`
	Digest        string    `json:"digest,omitempty"`
	RetentionDays int       `json:"retention_days"`
	CreatedAt     time.Time `json:"created_at"`
	// Scheduled: taken by the daily round, not asked for.
	Scheduled bool `json:"scheduled,omitempty"`
}

func volumesPath(app string) string { return appPath(app) + "/volumes" }

func volumePath(app, id string) string { return volumesPath(app) + "/" + url.PathEscape(id) }

// ListVolumes lists app's volumes.
func (c *Client) ListVolumes(ctx context.Context, app string) ([]Volume, error) {
	var out []Volume
	return out, c.do(ctx, http.MethodGet, volumesPath(app), nil, nil, &out)
}

// CreateVolume creates a volume of app.
func (c *Client) CreateVolume(ctx context.Context, app string, req CreateVolumeRequest) (*Volume, error) {
	var out Volume
	if err := c.do(ctx, http.MethodPost, volumesPath(app), nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetVolume reads one volume.
func (c *Client) GetVolume(ctx context.Context, app, id string) (*Volume, error) {
	var out Volume
	if err := c.do(ctx, http.MethodGet, volumePath(app, id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// DestroyVolume destroys a volume and its data (not its snapshots).
func (c *Client) DestroyVolume(ctx context.Context, app, id string) (*Volume, error) {
	var out Volume
	if err := c.do(ctx, http.MethodDelete, volumePath(app, id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ExtendVolume grows a volume to sizeGB.
func (c *Client) ExtendVolume(ctx context.Context, app, id string, sizeGB int) (*ExtendVolumeResponse, error) {
	var out ExtendVolumeResponse
	if err := c.do(ctx, http.MethodPut, volumePath(app, id)+"/extend", nil, ExtendVolumeRequest{SizeGB: sizeGB}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListVolumeSnapshots lists a volume's snapshots, oldest first.
func (c *Client) ListVolumeSnapshots(ctx context.Context, app, id string) ([]VolumeSnapshot, error) {
	var out []VolumeSnapshot
	return out, c.do(ctx, http.MethodGet, volumePath(app, id)+"/snapshots", nil, nil, &out)
}

// CreateVolumeSnapshot takes a snapshot of a volume now.
func (c *Client) CreateVolumeSnapshot(ctx context.Context, app, id string) (*VolumeSnapshot, error) {
	var out VolumeSnapshot
	if err := c.do(ctx, http.MethodPost, volumePath(app, id)+"/snapshots", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
