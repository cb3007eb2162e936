package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// manyFiles is an uncompressed layer of n empty files, d0000/f0000000 on,
// written on the fly: a tar of n×512 bytes that is never held in memory.
// Its headers come from one template, the name's digits and the checksum
// patched in, so the test spends its time in the store, not in making it.
type manyFiles struct {
	n      int
	digest v1.Hash
	size   int64
}

// Offsets in the template's header of the name's digits and the checksum.
const (
	mfDir, mfFile, mfSum = 1, 7, 148 // "dDDDD/fFFFFFFF"
)

var manyFilesTemplate = sync.OnceValue(func() []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "d0000/f0000000", Mode: 0o644, ModTime: epoch, Format: tar.FormatUSTAR}); err != nil {
		panic(err)
	}
	return buf.Bytes()[:512]
})

func newManyFiles(n int) (*manyFiles, error) {
	m := &manyFiles{n: n}
	h := sha256.New()
	size, err := io.Copy(h, m.reader())
	if err != nil {
		return nil, err
	}
	m.size = size
	m.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	return m, nil
}

// reader is the layer's tar from the start.
func (m *manyFiles) reader() io.Reader {
	return &manyFilesReader{n: m.n, hdr: bytes.Clone(manyFilesTemplate())}
}

type manyFilesReader struct {
	n, i    int
	base    int // the header's checksum without the name's digits
	hdr     []byte
	pending []byte
	ended   bool
}

func (r *manyFilesReader) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if len(r.pending) == 0 {
			switch {
			case r.i < r.n:
				r.header(r.i)
				r.pending = r.hdr
				r.i++
			case !r.ended:
				r.pending, r.ended = make([]byte, 1024), true // the end-of-archive blocks
			default:
				if total == 0 {
					return 0, io.EOF
				}
				return total, nil
			}
		}
		n := copy(p, r.pending)
		p, r.pending, total = p[n:], r.pending[n:], total+n
	}
	return total, nil
}

// header makes r.hdr entry i's: its digits, then its checksum, the sum of
// the header's bytes with the checksum field as spaces: the template's
// sum without its digits (base) and the new digits.
func (r *manyFilesReader) header(i int) {
	h := r.hdr
	if r.base == 0 {
		copy(h[mfSum:mfSum+8], "        ")
		for j, c := range h {
			if !(j >= mfDir && j < mfDir+4 || j >= mfFile && j < mfFile+7) {
				r.base += int(c)
			}
		}
	}
	putDigits(h[mfDir:mfDir+4], i/1000)
	putDigits(h[mfFile:mfFile+7], i)
	sum := r.base
	for _, c := range h[mfDir : mfDir+4] {
		sum += int(c)
	}
	for _, c := range h[mfFile : mfFile+7] {
		sum += int(c)
	}
	putOctal(h[mfSum:mfSum+6], sum)
	h[mfSum+6], h[mfSum+7] = 0, ' '
}

func putDigits(b []byte, v int) {
	for j := len(b) - 1; j >= 0; j-- {
		b[j] = byte('0' + v%10)
		v /= 10
	}
}

func putOctal(b []byte, v int) {
	for j := len(b) - 1; j >= 0; j-- {
		b[j] = byte('0' + v%8)
		v /= 8
	}
}

// The layer as a v1.Layer, for an image pushed with remote.Write (which
// finds the blob present and never reads it).
func (m *manyFiles) Digest() (v1.Hash, error)             { return m.digest, nil }
func (m *manyFiles) DiffID() (v1.Hash, error)             { return m.digest, nil }
func (m *manyFiles) Size() (int64, error)                 { return m.size, nil }
func (m *manyFiles) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (m *manyFiles) Compressed() (io.ReadCloser, error)   { return io.NopCloser(m.reader()), nil }
func (m *manyFiles) Uncompressed() (io.ReadCloser, error) { return io.NopCloser(m.reader()), nil }

var _ v1.Layer = (*manyFiles)(nil)

// generatedBlobs is a registry's blob store: pushed blobs in memory (ggcr's
// own handler), and the generated layers served as they are made, never
// stored.
type generatedBlobs struct {
	mem    ggcr.BlobHandler
	layers []*manyFiles
}

func newGeneratedBlobs(layers ...*manyFiles) *generatedBlobs {
	return &generatedBlobs{mem: ggcr.NewInMemoryBlobHandler(), layers: layers}
}

func (g *generatedBlobs) layer(h v1.Hash) *manyFiles {
	for _, l := range g.layers {
		if l.digest == h {
			return l
		}
	}
	return nil
}

func (g *generatedBlobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	if l := g.layer(h); l != nil {
		return io.NopCloser(l.reader()), nil
	}
	return g.mem.Get(ctx, repo, h)
}

func (g *generatedBlobs) Stat(ctx context.Context, repo string, h v1.Hash) (int64, error) {
	if l := g.layer(h); l != nil {
		return l.size, nil
	}
	return g.mem.(ggcr.BlobStatHandler).Stat(ctx, repo, h)
}

func (g *generatedBlobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return g.mem.(ggcr.BlobPutHandler).Put(ctx, repo, h, rc)
}

var (
	_ ggcr.BlobStatHandler = (*generatedBlobs)(nil)
	_ ggcr.BlobPutHandler  = (*generatedBlobs)(nil)
)
