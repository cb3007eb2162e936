package runc

import (
	"context"

	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

var _ runtime.DiskUser = (*Driver)(nil)

// DiskUsage is what the machine holds of its own on disk: its writable
// layer's image (disk.go: the blocks the sparse file has, not its size;
// its mounted contents are not walked, they are those blocks), or, where
// there is none, the overlay's upper layer or the root filesystem's copy;
// and a suspended machine's CRIU images.
func (d *Driver) DiskUsage(ctx context.Context, id string) (int64, error) {
	if err := checkID(id); err != nil {
		return 0, err
	}
	root := d.path(id, fileDisk)
	if !machinedir.Exists(root) {
		root = d.path(id, dirUpper)
	}
	if !machinedir.Exists(root) {
		root = d.path(id, dirRootfs)
	}
	return machinedir.DiskUsage(root, d.path(id, dirSnapshot))
}
