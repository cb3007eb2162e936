package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// VolumeRequest is a volume to place.
type VolumeRequest struct {
	Region string
	Name   string
	Bytes  int64
}

// PlaceVolume chooses the host of region req.Region for a new volume: an
// up host whose disk has room for it beside every volume already placed
// there at their full size (images are sparse, but each may fill up; no
// host promises more than it has). Among those, a host holding no volume
// of the same name first (Fly's unique zones: a database's replicas on
// different hosts), then the most room.
func PlaceVolume(req VolumeRequest, hosts []api.Host, vols []store.VolumeRecord) (string, error) {
	type cand struct {
		id       string
		room     int64
		sameName int
	}
	var cands []cand
	var reasons []string
	seen := false
	for _, h := range hosts {
		if h.Region != req.Region || h.Role == api.HostRoleControl {
			continue
		}
		seen = true
		if h.Status != api.HostUp {
			reasons = append(reasons, fmt.Sprintf("host %s is down", h.ID))
			continue
		}
		if h.Disk == nil {
			reasons = append(reasons, fmt.Sprintf("host %s has not reported its disk yet", h.ID))
			continue
		}
		room, same := h.Disk.FreeBytes, 0
		for _, v := range vols {
			if v.HostID == h.ID {
				room -= v.SizeBytes
				if v.Name == req.Name {
					same++
				}
			}
		}
		if room < req.Bytes {
			reasons = append(reasons, fmt.Sprintf("host %s has %s free for volumes, the volume needs %s", h.ID, gib(room), gib(req.Bytes)))
			continue
		}
		cands = append(cands, cand{h.ID, room, same})
	}
	if !seen {
		return "", fmt.Errorf("%w: no host in region %s; regions with hosts: %s", ErrUnplaceable, req.Region, regionsOf(hosts))
	}
	if len(cands) == 0 {
		return "", fmt.Errorf("%w: no host in region %s has room for a %s volume (%s); ask for a smaller size, free disk, or add a host in %s",
			ErrUnplaceable, req.Region, gib(req.Bytes), strings.Join(reasons, "; "), req.Region)
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.sameName != b.sameName {
			return a.sameName < b.sameName
		}
		if a.room != b.room {
			return a.room > b.room
		}
		return a.id < b.id
	})
	return cands[0].id, nil
}

// HasRoom says whether host h can grow a volume by more bytes beside
// the volumes placed on it (PlaceVolume's rule).
func HasRoom(h api.Host, more int64, vols []store.VolumeRecord) error {
	if h.Disk == nil {
		return fmt.Errorf("%w: host %s has not reported its disk yet", ErrUnplaceable, h.ID)
	}
	room := h.Disk.FreeBytes
	for _, v := range vols {
		if v.HostID == h.ID {
			room -= v.SizeBytes
		}
	}
	if room < more {
		return fmt.Errorf("%w: host %s has %s free for volumes, %s more are asked for", ErrUnplaceable, h.ID, gib(room), gib(more))
	}
	return nil
}

func gib(b int64) string {
	if b < 0 {
		b = 0
	}
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}
