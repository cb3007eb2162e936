package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// The layer store. Each layer is unpacked once, by the digest of its
// uncompressed tar (its diff ID), into layers/<alg>/<hex>/fs as an
// overlayfs lower directory, and every image holding it shares it: an
// image is then only its config and its list of layers, and the runtime
// stacks the layers' directories (overlayfs lowerdir) under each machine's
// own writable upper directory. The compressed blob is dropped once its
// layer is unpacked.
//
//	layers/sha256/<hex>/fs         the unpacked layer
//	layers/sha256/<hex>/meta.json  its compressed digest, size on disk, when unpacked
//	l/<id>                         a short symlink to the layer's fs, so a
//	                               mount of many layers fits the kernel's
//	                               one-page option string
//	images/sha256/<hex>/layers.json  the image's diff IDs, bottom first

// LayerInfo describes an unpacked layer.
type LayerInfo struct {
	DiffID   string    `json:"diff_id"`
	Digest   string    `json:"digest"` // of the compressed blob it came from
	Bytes    int64     `json:"bytes"`  // on disk
	Unpacked time.Time `json:"unpacked"`
	// What it counts against an image's Limits: file content written (a
	// sparse file's whole size) and entries made.
	Written int64 `json:"written,omitempty"`
	Entries int64 `json:"entries,omitempty"`
}

func (s *Store) layerDir(diffID v1.Hash) string {
	return filepath.Join(s.dir, "layers", diffID.Algorithm, diffID.Hex)
}

// shortLink is the short path of a layer's fs used in mount options.
func (s *Store) shortLink(diffID v1.Hash) string {
	return filepath.Join(s.dir, "l", diffID.Hex[:16])
}

// unpackLayered makes sure each of img's layers is in the layer store,
// downloading and unpacking only those missing, and records the image.
func (s *Store) unpackLayered(ctx context.Context, img v1.Image, dg v1.Hash, rawCfg []byte) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	diffIDs := make([]v1.Hash, len(layers))
	var missingLayers []v1.Layer
	for i, l := range layers {
		if diffIDs[i], err = l.DiffID(); err != nil {
			return fmt.Errorf("layer %d: diff id: %w", i+1, err)
		}
		if _, err := os.Stat(filepath.Join(s.layerDir(diffIDs[i]), "meta.json")); err != nil {
			missingLayers = append(missingLayers, l)
		}
	}
	if err := s.fetchLayers(ctx, missingLayers); err != nil {
		return err
	}
	var lowers []string // topmost first
	bud := newBudget(s.limits)
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.ensureLayer(ctx, l, diffIDs[i], lowers, bud); err != nil {
			return fmt.Errorf("unpack layer %d of %d (%s): %w", i+1, len(layers), diffIDs[i], err)
		}
		lowers = append([]string{s.shortLink(diffIDs[i])}, lowers...)
	}

	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.tmpDir(), "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ids := make([]string, len(diffIDs))
	for i, h := range diffIDs {
		ids[i] = h.String()
	}
	b, _ := json.Marshal(ids)
	if err := os.WriteFile(filepath.Join(tmp, "layers.json"), b, 0o600); err != nil {
		return err
	}
	return s.commitImage(tmp, dg, rawCfg)
}

// ensureLayer unpacks layer l (diff ID diffID) over lowers unless it is
// unpacked already, counting it against the image's budget b either way.
func (s *Store) ensureLayer(ctx context.Context, l v1.Layer, diffID v1.Hash, lowers []string, b *budget) error {
	unlock, err := s.locks.lock(ctx, "layer:"+diffID.String())
	if err != nil {
		return err
	}
	defer unlock()
	dir := s.layerDir(diffID)
	if mb, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil {
		var li LayerInfo
		if err := json.Unmarshal(mb, &li); err != nil {
			return fmt.Errorf("layer %s: meta.json: %w", diffID, err)
		}
		if li.Written == 0 { // unpacked before limits were counted
			li.Written = li.Bytes
		}
		if err := b.addBytes(li.Written, "layer "+diffID.String()+" (unpacked already)"); err != nil {
			return err
		}
		if err := b.addEntries(li.Entries); err != nil {
			return err
		}
		return s.link(diffID)
	}
	if err := s.fetchLayer(l); err != nil { // a blob GC'd since fetchLayers
		return err
	}
	tmp, err := os.MkdirTemp(s.tmpDir(), "layer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "fs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	ap, err := newLayerApplier(root, lowers, s.log)
	if err != nil {
		return err
	}
	ap.budget = b
	bytesBefore, entriesBefore := b.bytes, b.entries
	dg, _ := l.Digest()
	rc, err := s.openLayer(l)
	if err != nil {
		ap.Close()
		return err
	}
	err = ap.apply(rc)
	rc.Close()
	ap.Close()
	if err != nil {
		s.dropRefused(err, dg)
		return err
	}
	size, err := diskUsage(root)
	if err != nil {
		return err
	}
	meta, _ := json.Marshal(LayerInfo{DiffID: diffID.String(), Digest: dg.String(), Bytes: size, Unpacked: time.Now().UTC(),
		Written: b.bytes - bytesBefore, Entries: b.entries - entriesBefore})
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), meta, 0o600); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("store layer: %w", err)
	}
	// The blob has served its purpose: the layer is what machines use.
	if err := os.Remove(s.blobPath(dg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("remove unpacked layer's blob", "digest", dg, "err", err)
	}
	s.log.Info("layer unpacked", "diff_id", diffID.String(), "bytes", size)
	return s.link(diffID)
}

// dropRefused removes the blob of a layer refused for passing the image's
// limits (err): the half-unpacked tree is gone already, and the blob
// would only be refused again.
func (s *Store) dropRefused(err error, dg v1.Hash) {
	if !errors.Is(err, ErrLimit) {
		return
	}
	if err := os.Remove(s.blobPath(dg)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("remove refused layer's blob", "digest", dg, "err", err)
	}
}

// link makes the layer's short symlink.
func (s *Store) link(diffID v1.Hash) error {
	l := s.shortLink(diffID)
	target := filepath.Join(s.layerDir(diffID), "fs")
	if t, err := os.Readlink(l); err == nil && t == target {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(l), 0o755); err != nil {
		return err
	}
	tmp := l + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, l)
}

// imageLayers returns the short paths of image dg's layers, topmost
// first, making sure each is there.
func (s *Store) imageLayers(dir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "layers.json"))
	if err != nil {
		return nil, err
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	out := make([]string, 0, len(ids))
	for i := len(ids) - 1; i >= 0; i-- {
		h, err := v1.NewHash(ids[i])
		if err != nil {
			return nil, fmt.Errorf("image layers: %w", err)
		}
		if _, err := os.Stat(filepath.Join(s.layerDir(h), "meta.json")); err != nil {
			return nil, fmt.Errorf("layer %s is gone: %w", h, err)
		}
		if err := s.link(h); err != nil {
			return nil, err
		}
		out = append(out, s.shortLink(h))
	}
	return out, nil
}

// Layers lists the unpacked layers.
func (s *Store) Layers() ([]LayerInfo, error) {
	var out []LayerInfo
	base := filepath.Join(s.dir, "layers")
	algs, err := os.ReadDir(base)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	for _, alg := range algs {
		ents, err := os.ReadDir(filepath.Join(base, alg.Name()))
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(base, alg.Name(), e.Name(), "meta.json"))
			if err != nil {
				continue
			}
			var li LayerInfo
			if json.Unmarshal(b, &li) == nil {
				out = append(out, li)
			}
		}
	}
	return out, nil
}

// diskUsage is what the files under root take on disk.
func diskUsage(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n, err
}

// probeOverlay reports whether overlayfs mounts work in dir, as the layer
// store needs (and root, for the whiteouts and trusted xattrs).
func probeOverlay(dir string) error {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(dir, "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	a, b, m := filepath.Join(tmp, "a"), filepath.Join(tmp, "b"), filepath.Join(tmp, "m")
	for _, d := range []string{a, b, m} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mknod(filepath.Join(a, "wh"), unix.S_IFCHR|0o600, 0); err != nil {
		return fmt.Errorf("whiteout: %w", err)
	}
	if err := unix.Setxattr(a, overlayOpaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("opaque xattr: %w", err)
	}
	if err := unix.Mount("overlay", m, "overlay", unix.MS_RDONLY, "lowerdir="+a+":"+b); err != nil {
		return fmt.Errorf("mount overlay: %w", err)
	}
	return unix.Unmount(m, unix.MNT_DETACH)
}
