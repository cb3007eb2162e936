package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Usage is what the store holds.
type Usage struct {
	Images int   `json:"images"`
	Layers int   `json:"layers"`
	Bytes  int64 `json:"bytes"` // on disk: layers, whole images and blobs
}

// GCResult is what a collection removed and what is left.
type GCResult struct {
	Images, Layers int   // removed
	Freed          int64 // bytes
	Left           Usage
}

// storedImage is an image the store holds, as GC sees it.
type storedImage struct {
	digest string
	dir    string
	used   time.Time
	layers []string // diff IDs; nil for a whole unpacked image
	bytes  int64    // a whole image's own size
}

// Usage counts what the store holds.
func (s *Store) Usage() (Usage, error) {
	s.gc.RLock()
	defer s.gc.RUnlock()
	imgs, layers, blobs, err := s.inventory()
	if err != nil {
		return Usage{}, err
	}
	return usageOf(imgs, layers, blobs), nil
}

func usageOf(imgs []storedImage, layers map[string]LayerInfo, blobs int64) Usage {
	u := Usage{Images: len(imgs), Layers: len(layers), Bytes: blobs}
	for _, l := range layers {
		u.Bytes += l.Bytes
	}
	for _, im := range imgs {
		u.Bytes += im.bytes
	}
	return u
}

// GC removes images that no machine uses, least recently used first, and
// the layers and blobs no remaining image needs, until the store holds at
// most max bytes (max <= 0: remove all it may). inUse reports whether a
// machine uses the image with this manifest digest ("sha256:…"); such an
// image and its layers are never removed. An image pulled for a machine
// not yet made must count as in use: callers keep GC from running while
// they make machines. Pulls wait while it runs.
func (s *Store) GC(max int64, inUse func(digest string) bool) (GCResult, error) {
	s.gc.Lock()
	defer s.gc.Unlock()
	imgs, layers, blobs, err := s.inventory()
	if err != nil {
		return GCResult{}, err
	}
	var res GCResult
	total := usageOf(imgs, layers, blobs).Bytes
	if total <= max {
		res.Left = usageOf(imgs, layers, blobs)
		return res, nil
	}
	refs := map[string]int{}
	for _, im := range imgs {
		for _, l := range im.layers {
			refs[l]++
		}
	}
	removeLayer := func(id string) {
		li := layers[id]
		h, err := v1.NewHash(id)
		if err != nil {
			return
		}
		os.Remove(s.shortLink(h))
		if err := os.RemoveAll(s.layerDir(h)); err != nil {
			s.log.Warn("gc: remove layer", "diff_id", id, "err", err)
			return
		}
		delete(layers, id)
		total -= li.Bytes
		res.Freed += li.Bytes
		res.Layers++
	}
	// First what nothing needs: blobs (a download cache) and layers of no
	// image.
	if blobs > 0 {
		if err := os.RemoveAll(filepath.Join(s.dir, "blobs")); err == nil {
			total -= blobs
			res.Freed += blobs
			blobs = 0
		}
	}
	for _, id := range sortedIDs(layers) {
		if refs[id] == 0 && total > max {
			removeLayer(id)
		}
	}
	// Then images, least recently used first.
	slices.SortFunc(imgs, func(a, b storedImage) int { return a.used.Compare(b.used) })
	var kept []storedImage
	for _, im := range imgs {
		if total <= max || inUse(im.digest) {
			kept = append(kept, im)
			continue
		}
		if err := os.RemoveAll(im.dir); err != nil {
			s.log.Warn("gc: remove image", "digest", im.digest, "err", err)
			kept = append(kept, im)
			continue
		}
		res.Images++
		total -= im.bytes
		res.Freed += im.bytes
		for _, l := range im.layers {
			if refs[l]--; refs[l] == 0 {
				removeLayer(l)
			}
		}
	}
	res.Left = usageOf(kept, layers, blobs)
	if res.Images > 0 || res.Layers > 0 {
		s.log.Info("image gc", "images_removed", res.Images, "layers_removed", res.Layers,
			"freed_bytes", res.Freed, "bytes", res.Left.Bytes, "max_bytes", max)
	}
	return res, nil
}

func sortedIDs(m map[string]LayerInfo) []string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// inventory lists the store's images, layers (by diff ID) and the bytes of
// its blobs.
func (s *Store) inventory() ([]storedImage, map[string]LayerInfo, int64, error) {
	ls, err := s.Layers()
	if err != nil {
		return nil, nil, 0, err
	}
	layers := map[string]LayerInfo{}
	for _, l := range ls {
		layers[l.DiffID] = l
	}
	var imgs []storedImage
	base := filepath.Join(s.dir, "images")
	algs, err := os.ReadDir(base)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, 0, err
	}
	for _, alg := range algs {
		ents, err := os.ReadDir(filepath.Join(base, alg.Name()))
		if err != nil {
			return nil, nil, 0, err
		}
		for _, e := range ents {
			dir := filepath.Join(base, alg.Name(), e.Name())
			im := storedImage{digest: alg.Name() + ":" + e.Name(), dir: dir}
			if fi, err := os.Stat(filepath.Join(dir, "used")); err == nil {
				im.used = fi.ModTime()
			} else if fi, err := os.Stat(dir); err == nil {
				im.used = fi.ModTime()
			}
			if b, err := os.ReadFile(filepath.Join(dir, "layers.json")); err == nil {
				if err := json.Unmarshal(b, &im.layers); err != nil {
					return nil, nil, 0, fmt.Errorf("image %s: layers: %w", im.digest, err)
				}
			} else {
				im.bytes = s.wholeImageBytes(dir)
			}
			imgs = append(imgs, im)
		}
	}
	blobs, err := diskUsage(filepath.Join(s.dir, "blobs"))
	if err != nil {
		return nil, nil, 0, err
	}
	return imgs, layers, blobs, nil
}

// wholeImageBytes is the size of an image unpacked whole, measured once
// and kept beside it (it never changes).
func (s *Store) wholeImageBytes(dir string) int64 {
	p := filepath.Join(dir, "bytes")
	if b, err := os.ReadFile(p); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			return n
		}
	}
	n, err := diskUsage(filepath.Join(dir, "rootfs"))
	if err != nil {
		return 0
	}
	_ = os.WriteFile(p, []byte(strconv.FormatInt(n, 10)), 0o600)
	return n
}
