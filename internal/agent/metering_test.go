package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/volume"
)

// TestVolumeGBIsTheProvisionedSize: a machine's metered volume storage is
// the provisioned size of the volumes it mounts (a sparse image of 3 GB
// holding a few bytes is billed as 3 GB, as Fly bills volumes), and a
// mount naming something that is not a volume id counts nothing.
func TestVolumeGBIsTheProvisionedSize(t *testing.T) {
	state := t.TempDir()
	w := &worker{a: &Agent{cfg: Config{StateDir: state}}}
	for id, size := range map[string]int64{"vol_a1": 3e9, "vol_b2": 1e9} {
		dir := volumeDir(state, id)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(volume.Image(dir))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	spec := store.MachineSpec{Config: api.MachineConfig{Mounts: []api.Mount{
		{Volume: "vol_a1", Path: "/data"}, {Volume: "vol_b2", Path: "/logs"},
		{Volume: "../" + filepath.Base(state), Path: "/x"},
	}}}
	if got := w.volumeGB(spec); got != 4 {
		t.Errorf("volumeGB = %g; want 4 (3 GB + 1 GB provisioned)", got)
	}
	if got := w.volumeGB(store.MachineSpec{}); got != 0 {
		t.Errorf("volumeGB of a machine without mounts = %g; want 0", got)
	}
}
