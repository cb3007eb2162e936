package runc

import (
	"errors"
	"fmt"
	"os"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// record is what Create leaves for Start, State and Destroy, including
// those of a later driver after an agent restart.
type record struct {
	Spec runtime.Spec `json:"spec"`
	// Copy says the rootfs is a full copy instead of an overlay mount.
	Copy bool `json:"copy"`
	// UIDBase is the first host id of the machine's user namespace
	// (userns.go); 0 for a machine made before machines had one.
	UIDBase uint32 `json:"uid_base,omitempty"`
	// Disk says the writable layer is on the machine's own disk image
	// (disk.go); false for a copy, or a machine made before disks.
	Disk bool `json:"disk,omitempty"`
}

func (d *Driver) readRecord(id string) (record, error) {
	var r record
	err := machinedir.ReadJSON(d.path(id, fileRecord), &r)
	if errors.Is(err, os.ErrNotExist) {
		return r, fmt.Errorf("runc: %s: %w", id, runtime.ErrNotFound)
	}
	return r, err
}
