package scheduler

import (
	"errors"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

func TestPlaceVolume(t *testing.T) {
	disk := func(gb int64) *api.HostDisk { return &api.HostDisk{FreeBytes: gb << 30} }
	hosts := []api.Host{
		{ID: "iad-a", Region: "iad", Status: api.HostUp, Disk: disk(100)},
		{ID: "iad-b", Region: "iad", Status: api.HostUp, Disk: disk(50)},
		{ID: "iad-c", Region: "iad", Status: api.HostDown, Disk: disk(500)},
		{ID: "ams-a", Region: "ams", Status: api.HostUp, Disk: disk(10)},
	}
	// Most room first.
	if h, err := PlaceVolume(VolumeRequest{Region: "iad", Name: "pg", Bytes: 1 << 30}, hosts, nil); err != nil || h != "iad-a" {
		t.Errorf("first pg volume on %s, %v; want iad-a (most room)", h, err)
	}
	// A second of the same name goes to the other host, though it has less room.
	vols := []store.VolumeRecord{{Name: "pg", HostID: "iad-a", SizeBytes: 1 << 30}}
	if h, err := PlaceVolume(VolumeRequest{Region: "iad", Name: "pg", Bytes: 1 << 30}, hosts, vols); err != nil || h != "iad-b" {
		t.Errorf("second pg volume on %s, %v; want iad-b (no pg there)", h, err)
	}
	// Placed volumes count at their full size: 60 GB on iad-a leaves 40.
	vols = []store.VolumeRecord{{Name: "x", HostID: "iad-a", SizeBytes: 60 << 30}}
	if h, err := PlaceVolume(VolumeRequest{Region: "iad", Name: "y", Bytes: 45 << 30}, hosts, vols); err != nil || h != "iad-b" {
		t.Errorf("45 GB volume on %s, %v; want iad-b (iad-a has 40 left)", h, err)
	}
	_, err := PlaceVolume(VolumeRequest{Region: "iad", Name: "y", Bytes: 60 << 30}, hosts, vols)
	if !errors.Is(err, ErrUnplaceable) || !strings.Contains(err.Error(), "host iad-c is down") || !strings.Contains(err.Error(), "host iad-a has 40.0 GiB free") {
		t.Errorf("too big: %v", err)
	}
	if _, err := PlaceVolume(VolumeRequest{Region: "sin", Name: "y", Bytes: 1}, hosts, nil); err == nil || !strings.Contains(err.Error(), "no host in region sin") {
		t.Errorf("region without hosts: %v", err)
	}
}

func TestPlacePinnedHost(t *testing.T) {
	hosts := []api.Host{
		{ID: "iad-a", Region: "iad", Status: api.HostUp, CPUs: 4, MemoryMB: 4096, Subnet: "10.0.1.0/24"},
		{ID: "iad-b", Region: "iad", Status: api.HostUp, CPUs: 4, MemoryMB: 8192, Subnet: "10.0.2.0/24"},
	}
	p, err := Place(Request{Region: "iad", Host: "iad-a"}, hosts, nil)
	if err != nil || p.HostID != "iad-a" {
		t.Errorf("pinned to iad-a: %+v %v", p, err)
	}
	if _, err := Place(Request{Region: "iad", Host: "ams-a"}, hosts, nil); err == nil || !strings.Contains(err.Error(), "volume is on host ams-a") {
		t.Errorf("pinned to a host outside the region: %v", err)
	}
}
