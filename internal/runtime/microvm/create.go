package microvm

import (
	"context"
	"fmt"
	"os"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// MinMemoryMB is the least memory a microVM gets: Debian's cloud kernel
// alone needs about 80 MB to boot.
const MinMemoryMB = 128

// maxFilesBytes bounds a machine's config.files: they go to the guest in
// its config frame (base64 in JSON), under guestinit's 1 MiB frame limit.
const maxFilesBytes = 512 << 10

// Create prepares the machine: the image's disk (made once per image),
// the machine's copy-on-write disk over it, its tap on the bridge. An
// existing machine of the same id is destroyed first. The VM itself only
// exists while the machine runs.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (err error) {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if len(spec.Process.Args) == 0 {
		return fmt.Errorf("microvm: create %s: no command to run; set the image's entrypoint/cmd or the machine's init.cmd", spec.ID)
	}
	// The guest's init writes them (guestinit/files.go), sent in its
	// config frame, which must stay under the frame limit.
	filesBytes := 0
	for _, f := range spec.Files {
		filesBytes += len(f.Data)
	}
	if filesBytes > maxFilesBytes {
		return fmt.Errorf("microvm: create %s: config.files hold %d bytes; a microVM takes at most %d (512 KiB): bake larger files into the image", spec.ID, filesBytes, maxFilesBytes)
	}
	for _, m := range spec.Mounts {
		if m.Image == "" {
			return fmt.Errorf("microvm: create %s: the volume for %s has no image file", spec.ID, m.Destination)
		}
		if _, err := os.Stat(m.Image); err != nil {
			return fmt.Errorf("microvm: create %s: volume for %s: %w", spec.ID, m.Destination, err)
		}
	}
	if spec.MemoryMB > 0 && spec.MemoryMB < MinMemoryMB {
		return fmt.Errorf("microvm: create %s: memory_mb must be at least %d for a microVM (its kernel needs the room), got %d", spec.ID, MinMemoryMB, spec.MemoryMB)
	}
	if err := spec.CheckLowers(); err != nil {
		return fmt.Errorf("microvm: create %s: %w", spec.ID, err)
	}
	// What Start will need, so that a host without it fails here, saying
	// what is missing; the kernel and initramfs are found once.
	if err := d.checkTools(); err != nil {
		return fmt.Errorf("microvm: create %s: %w", spec.ID, err)
	}
	if _, _, err := d.bootFiles(); err != nil {
		return fmt.Errorf("microvm: create %s: %w", spec.ID, err)
	}
	id := spec.ID
	if err := d.Destroy(ctx, id); err != nil {
		return fmt.Errorf("microvm: create %s: remove the old machine: %w", id, err)
	}
	unlock := d.lock(id)
	defer unlock()
	if err := os.MkdirAll(d.dir(id), 0o700); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			if derr := d.destroy(ctx, id); derr != nil {
				d.log.Warn("cleaning up after failed create", "id", id, "err", derr)
			}
		}
	}()
	u, err := imageuser.Resolve(spec.Lowers(), spec.Process.User)
	if err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	r := record{Spec: spec, User: u}
	// The record goes first so a failed create can still be destroyed
	// completely, by this driver or the next.
	if err := machinedir.WriteJSON(d.path(id, fileRecord), r); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	if r.Base, err = d.baseDisk(spec.Lowers()); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	if err := machineDisk(r.Base, d.path(id, fileDisk)); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	if spec.Net.Bridge != "" {
		if r.Tap, err = hostnet.AttachTap(id, spec.Net); err != nil {
			return fmt.Errorf("microvm: create %s: %w", id, err)
		}
	}
	if err := machinedir.WriteJSON(d.path(id, fileRecord), r); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	if err := machinedir.CreateFiles(d.dir(id), fileStdout, fileStderr, fileConsole); err != nil {
		return fmt.Errorf("microvm: create %s: %w", id, err)
	}
	d.log.Debug("machine created", "id", id, "disk", r.Base)
	return nil
}
