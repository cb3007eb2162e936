package runc

import (
	"context"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

var _ runtime.DiskUser = (*Driver)(nil)

// DiskUsage is what the machine holds of its own on disk: the overlay's
// upper layer (or, where overlayfs is missing, the root filesystem's
// copy) and a suspended machine's CRIU images.
func (d *Driver) DiskUsage(ctx context.Context, id string) (int64, error) {
	if err := checkID(id); err != nil {
		return 0, err
	}
	root := d.path(id, dirUpper)
	if !machinedir.Exists(root) {
		root = d.path(id, dirRootfs)
	}
	return machinedir.DiskUsage(root, d.path(id, dirSnapshot))
}
