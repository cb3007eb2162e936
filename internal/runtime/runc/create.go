package runc

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/perchhq/perch/internal/hostnet"
	"github.com/perchhq/perch/internal/runtime"
	"github.com/perchhq/perch/internal/runtime/imageuser"
	"github.com/perchhq/perch/internal/runtime/machinedir"
)

// Create prepares the machine: writable root, network namespace on the
// bridge, OCI bundle. An existing machine of the same id is destroyed
// first.
func (d *Driver) Create(ctx context.Context, spec runtime.Spec) (err error) {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if d.escape != nil {
		return fmt.Errorf("runc: create %s: %w", spec.ID, d.escape)
	}
	if len(spec.Process.Args) == 0 {
		return fmt.Errorf("runc: create %s: no command to run; set the image's entrypoint/cmd or the machine's init.cmd", spec.ID)
	}
	if err := spec.CheckLowers(); err != nil {
		return fmt.Errorf("runc: create %s: %w", spec.ID, err)
	}
	id := spec.ID
	if err := d.Destroy(ctx, id); err != nil {
		return fmt.Errorf("runc: create %s: remove the old machine: %w", id, err)
	}
	unlock := d.lock(id)
	defer unlock()
	if err := os.MkdirAll(d.dir(id), 0o700); err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
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
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	base, err := allocIDRange(d.dir(id)) // userns.go
	if err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	defer func() {
		if err != nil {
			releaseIDRange(base, d.dir(id))
		}
	}()
	copied, err := d.makeRootfs(d.dir(id), spec.Lowers(), base)
	if errors.Is(err, errNoIDMap) {
		// Better a machine without a user namespace than none: say so once.
		d.idmapOnce.Do(func() {
			d.log.Warn("machines run without a user namespace of their own: their image layers cannot be mounted idmapped", "err", err)
		})
		releaseIDRange(base, d.dir(id))
		base = 0
		copied, err = d.makeRootfs(d.dir(id), spec.Lowers(), base)
	}
	if err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	if err := writeFiles(d.path(id, dirRootfs), spec.Files, hostID(base, 0)); err != nil { // files.go
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	if err := claimVolumes(d.path(id, dirRootfs), spec.Mounts, u, base); err != nil { // idmap.go
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	if base != 0 {
		if err := d.bindRoot(id); err != nil {
			return fmt.Errorf("runc: create %s: %w", id, err)
		}
	}
	r := record{Spec: spec, Copy: copied, UIDBase: base, Disk: !copied}
	// The record goes first so a failed create can still be destroyed
	// completely, by this driver or the next.
	if err := machinedir.WriteJSON(d.path(id, fileRecord), r); err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	hostname := spec.Hostname
	if hostname == "" {
		hostname = id
	}
	var netns string
	if base != 0 {
		if err := d.pinNamespaces(id, base, netnsPath(id, spec.Net)); err != nil {
			return fmt.Errorf("runc: create %s: %w", id, err)
		}
	}
	if spec.Net.Bridge != "" {
		if netns, err = hostnet.Attach(id, spec.Net); err != nil {
			return fmt.Errorf("runc: create %s: %w", id, err)
		}
	}
	etc, err := d.writeEtc(id, hostname, spec.Net, hostID(base, 0))
	if err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	if base != 0 && netns != "" {
		netns = d.runcNetnsPath(id) // suspendns.go
	}
	s := ociSpec(spec, d.bundleRoot(id, base), netns, u, d.cgroupParent, base, d.usernsPath(id))
	s.Mounts = append(s.Mounts, etc...)
	for i, m := range spec.Mounts { // volumes, mounted on the host by the agent
		if m.Source == "" {
			return fmt.Errorf("runc: create %s: volume for %s has no host directory", id, m.Destination)
		}
		src := m.Source
		if base != 0 {
			src = d.volumeBind(id, i) // idmap.go: mounted at start
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: src, Options: []string{"rbind", "rw", "nosuid", "nodev"}})
	}
	// runc hands CRIU this per-machine configuration file; it exists only
	// while a checkpoint needs options runc has no flag for (suspend.go).
	s.Annotations = map[string]string{"org.criu.config": d.path(id, fileCriuConf)}
	if err := machinedir.WriteJSON(d.path(id, fileConfig), s); err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	if err := machinedir.CreateFiles(d.dir(id), fileStdout, fileStderr); err != nil {
		return fmt.Errorf("runc: create %s: %w", id, err)
	}
	d.log.Debug("machine created", "id", id, "copy", copied)
	return nil
}
