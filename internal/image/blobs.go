package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fetchParallel bounds concurrent layer downloads of one pull.
const fetchParallel = 3

// fetchLayers makes sure every layer is in the blob cache.
func (s *Store) fetchLayers(ctx context.Context, layers []v1.Layer) error {
	errs := make([]error, len(layers))
	sem := make(chan struct{}, fetchParallel)
	var wg sync.WaitGroup
	for i, l := range layers {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
				errs[i] = s.fetchLayer(l)
			case <-ctx.Done():
				errs[i] = ctx.Err()
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err)
		}
	}
	return nil
}

// fetchLayer downloads a layer's compressed blob unless the cache has it.
// The registry client checks the digest as it reads, and the blob is
// renamed into place only once complete, so a cached blob is always whole.
func (s *Store) fetchLayer(l v1.Layer) error {
	dg, err := l.Digest()
	if err != nil {
		return err
	}
	dst := s.blobPath(dg)
	if _, err := os.Stat(dst); err == nil {
		return nil
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(s.tmpDir(), "blob-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op once renamed
	_, err = io.Copy(f, rc)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download %s: %w", dg, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}

// openLayer returns the uncompressed tar stream of a cached layer, whether
// it was stored gzip, zstd or uncompressed.
func (s *Store) openLayer(l v1.Layer) (io.ReadCloser, error) {
	dg, err := l.Digest()
	if err != nil {
		return nil, err
	}
	mt, err := l.MediaType()
	if err != nil {
		return nil, err
	}
	cl, err := partial.CompressedToLayer(&cachedBlob{path: s.blobPath(dg), digest: dg, mediaType: mt})
	if err != nil {
		return nil, err
	}
	return cl.Uncompressed()
}

// cachedBlob is a layer blob in the cache, as ggcr's partial package wants
// it to add decompression.
type cachedBlob struct {
	path      string
	digest    v1.Hash
	mediaType types.MediaType
}

func (b *cachedBlob) Digest() (v1.Hash, error)            { return b.digest, nil }
func (b *cachedBlob) MediaType() (types.MediaType, error) { return b.mediaType, nil }
func (b *cachedBlob) Compressed() (io.ReadCloser, error)  { return os.Open(b.path) }
func (b *cachedBlob) Size() (int64, error) {
	fi, err := os.Stat(b.path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}
