package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Pull resolves ref, downloads the layers it lacks and unpacks the image,
// unless that image is already unpacked. A reference by digest to an image
// already unpacked needs no registry at all, so machines restart while the
// registry is down.
func (s *Store) Pull(ctx context.Context, ref string, opts Options) (*Image, error) {
	var nopts []name.Option
	if opts.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nopts...)
	if err != nil {
		return nil, fmt.Errorf("image: %q is not an image reference (want e.g. registry.example.com/app:v1): %w", ref, err)
	}
	plat, err := parsePlatform(opts.Platform)
	if err != nil {
		return nil, err
	}
	s.gc.RLock()
	defer s.gc.RUnlock()
	if d, ok := r.(name.Digest); ok {
		if h, err := v1.NewHash(d.DigestStr()); err == nil {
			if img, err := s.load(r.Context(), h); err == nil {
				return img, nil
			}
		}
	}

	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(tokenKeychain(opts.Tokens)),
		remote.WithPlatform(plat),
		remote.WithUserAgent("perch"),
		// Callers retry pulls on their own schedule; fail fast here.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 3}),
	}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, describe(r, err)
	}
	img, err := selectImage(r, desc, plat)
	if err != nil {
		return nil, err
	}
	dg, err := img.Digest()
	if err != nil {
		return nil, describe(r, err)
	}

	unlock, err := s.locks.lock(ctx, dg.String())
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer unlock()
	if cached, err := s.load(r.Context(), dg); err == nil {
		return cached, nil
	}
	if err := s.unpack(ctx, img, dg); err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && notFound(terr) {
			return nil, fmt.Errorf("pull %s: registry %s lacks part of the image (%w); push the image again", ref, r.Context().RegistryStr(), err)
		}
		return nil, describe(r, err)
	}
	s.log.Info("image unpacked", "ref", ref, "digest", dg.String())
	return s.load(r.Context(), dg)
}

// unpack downloads img's layers and unpacks them into images/<digest>,
// building in tmp/ and renaming so no reader sees a partial tree.
func (s *Store) unpack(ctx context.Context, img v1.Image, dg v1.Hash) error {
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if _, err := v1.ParseConfigFile(bytes.NewReader(rawCfg)); err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	if s.layered {
		return s.unpackLayered(ctx, img, dg, rawCfg)
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	if err := s.fetchLayers(ctx, layers); err != nil {
		return err
	}

	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.tmpDir(), "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // nothing left once renamed
	rootfs := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return err
	}
	// Whatever the umask: users inside the machine must be able to reach
	// "/" when no layer lists it.
	if err := os.Chmod(rootfs, 0o755); err != nil {
		return err
	}
	if err := s.applyLayers(ctx, rootfs, layers); err != nil {
		return err
	}
	return s.commitImage(tmp, dg, rawCfg)
}

// commitImage writes the image's config into tmp, its directory being
// built, and renames tmp into place as image dg.
func (s *Store) commitImage(tmp string, dg v1.Hash, rawCfg []byte) error {
	if err := os.WriteFile(filepath.Join(tmp, "config.json"), rawCfg, 0o600); err != nil {
		return err
	}
	dst := s.imageDir(dg)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil && !errors.Is(err, fs.ErrExist) {
		// ErrExist: another process unpacked the same image first.
		return fmt.Errorf("store unpacked image: %w", err)
	}
	return nil
}

func (s *Store) applyLayers(ctx context.Context, rootfs string, layers []v1.Layer) error {
	ap, err := newApplier(rootfs, s.log)
	if err != nil {
		return err
	}
	defer ap.Close()
	ap.budget = newBudget(s.limits)
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		dg, _ := l.Digest()
		rc, err := s.openLayer(l)
		if err != nil {
			return fmt.Errorf("open layer %d (%s): %w", i+1, dg, err)
		}
		err = ap.apply(rc)
		rc.Close()
		if err != nil {
			s.dropRefused(err, dg)
			return fmt.Errorf("unpack layer %d of %d (%s): %w", i+1, len(layers), dg, err)
		}
	}
	return nil
}

// load returns the unpacked image dg, or an error if it is not unpacked.
func (s *Store) load(repo name.Repository, dg v1.Hash) (*Image, error) {
	dir := s.imageDir(dg)
	f, err := os.Open(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg, err := v1.ParseConfigFile(f)
	if err != nil {
		return nil, fmt.Errorf("image %s: cached config: %w", dg, err)
	}
	img := &Image{
		Ref:    repo.Digest(dg.String()).String(),
		Digest: dg.String(),
		Config: cfg.Config,
	}
	if _, err := os.Stat(filepath.Join(dir, "layers.json")); err == nil {
		if img.Layers, err = s.imageLayers(dir); err != nil {
			return nil, fmt.Errorf("image %s: %w", dg, err)
		}
	} else {
		img.Rootfs = filepath.Join(dir, "rootfs")
		if _, err := os.Stat(img.Rootfs); err != nil {
			return nil, err
		}
	}
	touch(filepath.Join(dir, "used"))
	return img, nil
}

// touch sets path's modification time to now, making it if need be.
func touch(path string) {
	now := time.Now()
	if err := os.Chtimes(path, now, now); err == nil {
		return
	}
	if f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		f.Close()
	}
}
