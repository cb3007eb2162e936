package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The layer bombs of issue 11: each is built here with archive/tar and
// gzip, pushed to a real registry and pulled by a real Store, which must
// refuse it with an error naming the limit and leave nothing on disk, or,
// for sparse files under the limit, keep the holes.

const gib = 1 << 30

// TestLayerBombZeros: 1 GiB of zeros in about 1 MiB of gzip is refused by
// a 64 MiB limit before any of it is written; under the default limit it
// is unpacked as a hole.
func TestLayerBombZeros(t *testing.T) {
	reg := startCountingRegistry(t)
	layer := zerosLayer(t, "zeros", gib)
	if sz, _ := layer.Size(); sz > 4<<20 {
		t.Fatalf("the bomb is %s compressed, want a few MiB", formatSize(sz))
	}
	ref := reg.push(t, "bomb:zeros", imageOf(t, layer))

	for _, layered := range []bool{true, false} {
		t.Run(map[bool]string{true: "layers", false: "whole image"}[layered], func(t *testing.T) {
			dir := t.TempDir()
			s := New(dir, testLogger(t), WithLimits(Limits{MaxBytes: 64 << 20}))
			if layered && !s.layered {
				t.Skip("overlayfs layers need root")
			}
			s.layered = layered
			written := processWritten(t)
			start := time.Now()
			_, err := s.Pull(context.Background(), ref, Options{})
			wantLimit(t, err, "bytes", "writes more than 64 MiB", "this 1 GiB file")
			if w := processWritten(t) - written; w > 16<<20 {
				t.Errorf("the refused pull wrote %s to files and sockets, want only the download", formatSize(w))
			}
			t.Logf("refused in %v: %v", time.Since(start), err)
			assertNothingStored(t, dir)
		})
	}

	// Under the default limit (8 GiB) it unpacks, and takes no disk.
	s := New(t.TempDir(), testLogger(t))
	img, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	assertSparse(t, rootPath(t, img, "zeros"), gib)
}

// TestLayerBombSparse: a PAX sparse entry of a few KiB that claims 1 GiB
// stays sparse on disk, and is refused by a limit below its size.
func TestLayerBombSparse(t *testing.T) {
	reg := startCountingRegistry(t)
	raw := sparseTar(t, "sparse", gib, "end")
	if len(raw) > 8<<10 {
		t.Fatalf("the sparse tar is %d bytes, want a few KiB", len(raw))
	}
	ref := reg.push(t, "bomb:sparse", imageOf(t, gzLayer(t, func(w io.Writer) error { _, err := w.Write(raw); return err })))

	s := New(t.TempDir(), testLogger(t))
	img, err := s.Pull(context.Background(), ref, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := rootPath(t, img, "sparse")
	assertSparse(t, p, gib)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tail := make([]byte, 3)
	if _, err := f.ReadAt(tail, gib-3); err != nil || string(tail) != "end" {
		t.Errorf("the sparse file's data: got %q, %v, want %q at its end", tail, err, "end")
	}

	dir := t.TempDir()
	s = New(dir, testLogger(t), WithLimits(Limits{MaxBytes: 512 << 20}))
	_, err = s.Pull(context.Background(), ref, Options{})
	wantLimit(t, err, "bytes", "writes more than 512 MiB", "512 MiB over")
	assertNothingStored(t, dir)
}

// TestLayerBombManyFiles: a layer of a million empty files (a tar of 512
// MiB, made as the registry serves it) is refused at the entry limit: a
// low one, and, with PERCH_SLOW_TESTS=1, the default (which writes 500,000
// files first: one to several minutes on a busy host); either way nothing
// is left on disk.
func TestLayerBombManyFiles(t *testing.T) {
	const files = 1_000_000
	start := time.Now()
	layer, err := newManyFiles(files)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a layer of %d empty files: %s, hashed in %v", files, formatSize(layer.size), time.Since(start).Round(time.Millisecond))
	reg := serveCounting(t, ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0)), ggcr.WithBlobHandler(newGeneratedBlobs(layer))))
	ref := reg.push(t, "bomb:files", imageOf(t, layer))

	for _, tc := range []struct {
		name string
		max  int64
		want string
	}{
		{"limit 5000", 5000, "more than 5000 files, directories and links"},
		{"default limit", 0, fmt.Sprintf("more than %d files, directories and links", DefaultMaxEntries)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.max == 0 && os.Getenv("PERCH_SLOW_TESTS") != "1" {
				t.Skip("writes 500,000 files before refusing them; set PERCH_SLOW_TESTS=1 to run")
			}
			dir := t.TempDir()
			s := New(dir, testLogger(t), WithLimits(Limits{MaxEntries: tc.max}))
			start := time.Now()
			_, err := s.Pull(context.Background(), ref, Options{})
			wantLimit(t, err, "entries", tc.want)
			t.Logf("refused in %v: %v", time.Since(start).Round(time.Millisecond), err)
			assertNothingStored(t, dir)
		})
	}
}

// TestLayerBombDeepPath: a path 10,000 directories deep is refused by the
// default depth limit, and so is a shallow path through a symlink whose
// target is deep.
func TestLayerBombDeepPath(t *testing.T) {
	reg := startCountingRegistry(t)
	deep := strings.Repeat("a/", 10_000) + "f"
	viaLink := strings.Repeat("b/", 1000)
	for _, tc := range []struct {
		name    string
		entries []ent
		want    string
	}{
		{"path", []ent{file(deep, "x", 0o644)}, "10001 directories deep (limit 128, 9873 over)"},
		{"symlink", []ent{symlink("s", viaLink), file("s/f", "x", 0o644)}, "129 directories deep (limit 128, 1 over)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := layerTar(t, tc.entries...)
			ref := reg.push(t, "bomb:"+tc.name, imageOf(t, gzLayer(t, func(w io.Writer) error { _, err := w.Write(raw); return err })))
			dir := t.TempDir()
			_, err := New(dir, testLogger(t)).Pull(context.Background(), ref, Options{})
			wantLimit(t, err, "depth", tc.want)
			assertNothingStored(t, dir)
		})
	}
}

// TestLimitsCountAcrossLayers: the byte limit is per image, so layers
// each under it but together over it are refused, those unpacked before
// (shared with other images) counting too.
func TestLimitsCountAcrossLayers(t *testing.T) {
	reg := startCountingRegistry(t)
	one := gzLayer(t, func(w io.Writer) error {
		_, err := w.Write(layerTar(t, file("one", strings.Repeat("1", 600<<10), 0o644)))
		return err
	})
	two := gzLayer(t, func(w io.Writer) error {
		_, err := w.Write(layerTar(t, file("two", strings.Repeat("2", 600<<10), 0o644)))
		return err
	})
	base := reg.push(t, "app:base", imageOf(t, one))
	both := reg.push(t, "app:both", imageOf(t, one, two))

	s := New(t.TempDir(), testLogger(t), WithLimits(Limits{MaxBytes: 1 << 20}))
	if _, err := s.Pull(context.Background(), base, Options{}); err != nil {
		t.Fatal(err)
	}
	_, err := s.Pull(context.Background(), both, Options{})
	wantLimit(t, err, "bytes", "writes more than 1 MiB", "this 600 KiB file brings it to 1.2 MiB")
}

// TestHardLinksCopiedUpCount: hard links to a lower layer's file are
// copies in the upper layer, so a layer of a few hundred bytes linking to
// a big file many times counts each copy.
func TestHardLinksCopiedUpCount(t *testing.T) {
	reg := startCountingRegistry(t)
	dir := t.TempDir()
	s := New(dir, testLogger(t), WithLimits(Limits{MaxBytes: 4 << 20}))
	needLayered(t, s)
	var links []ent
	for i := range 100 {
		links = append(links, hardlink(fmt.Sprintf("copy%d", i), "big"))
	}
	big := gzLayer(t, func(w io.Writer) error {
		_, err := w.Write(layerTar(t, file("big", strings.Repeat("b", 1<<20), 0o644)))
		return err
	})
	copies := gzLayer(t, func(w io.Writer) error { _, err := w.Write(layerTar(t, links...)); return err })
	ref := reg.push(t, "bomb:links", imageOf(t, big, copies))
	_, err := s.Pull(context.Background(), ref, Options{})
	wantLimit(t, err, "bytes", "writes more than 4 MiB", "a hard link's copy of the 1 MiB file big")
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) > 0 {
		t.Errorf("the refused layer left %d entries in tmp/", len(left))
	}
}

// wantLimit checks that err is a refusal for limit whose message says
// each of want.
func wantLimit(t *testing.T, err error, limit string, want ...string) {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrLimit) {
		t.Fatalf("pull: got %v, want a refusal for the %s limit", err, limit)
	}
	if le.Limit != limit {
		t.Errorf("refused for the %s limit, want %s: %v", le.Limit, limit, err)
	}
	for _, w := range append(want, "the image is refused") {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the error does not say %q: %v", w, err)
		}
	}
}

// assertNothingStored checks that the store under dir holds no file, no
// layer, image or blob, and nothing in tmp/: only its empty skeleton.
func assertNothingStored(t *testing.T, dir string) {
	t.Helper()
	skeleton := map[string]bool{".": true, "tmp": true, "blobs": true, "blobs/sha256": true, "layers": true, "layers/sha256": true, "images": true, "images/sha256": true, "l": true}
	var left []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if !skeleton[filepath.ToSlash(rel)] {
			left = append(left, rel)
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("a refused image left %d entries in the store: %q", len(left), left[:min(len(left), 10)])
	}
	if n, _ := diskUsage(dir); n > 1<<20 {
		t.Errorf("the store takes %s after a refused pull", formatSize(n))
	}
}

// assertSparse checks that p is size bytes long but takes almost no disk.
func assertSparse(t *testing.T, p string, size int64) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("%s is %d bytes, want %d", p, fi.Size(), size)
	}
	n, err := diskUsage(p)
	if err != nil {
		t.Fatal(err)
	}
	if n > 1<<20 {
		t.Errorf("%s takes %s of disk, want its holes kept (under 1 MiB)", p, formatSize(n))
	}
	t.Logf("%s: %s long, %s on disk", filepath.Base(p), formatSize(fi.Size()), formatSize(n))
}

// rootPath is the path of rel in img's topmost layer, or its tree.
func rootPath(t *testing.T, img *Image, rel string) string {
	t.Helper()
	d, err := filepath.EvalSymlinks(img.Lowers()[0])
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(d, rel)
}

// processWritten is what this process has passed to write(2) and kin,
// files and sockets alike (wchar in /proc/self/io).
func processWritten(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io to measure writes: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "wchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("/proc/self/io has no wchar")
	return 0
}

func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// gzLayer is a gzip layer of the tar gen writes, held compressed in
// memory; its diff ID is hashed as it is written, so a huge layer is
// never held or read again uncompressed.
func gzLayer(t *testing.T, gen func(w io.Writer) error) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	diff := sha256.New()
	if err := gen(io.MultiWriter(zw, diff)); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return memLayer(t, buf.Bytes(), diff.Sum(nil))
}

// zerosLayer is a layer of one file of size zeros (a multiple of 1 MiB),
// as one gzip member per MiB: a gzip reader reads the members as one
// stream, and the test compresses only one.
func zerosLayer(t *testing.T, name string, size int64) v1.Layer {
	t.Helper()
	member := func(b []byte) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		zw.Write(b)
		zw.Close()
		return buf.Bytes()
	}
	var hdr bytes.Buffer
	tw := tar.NewWriter(&hdr)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch}); err != nil {
		t.Fatal(err)
	}
	tw.Flush() // the header block only: the body follows
	end := make([]byte, 1024)
	mib := make([]byte, 1<<20)
	zmib := member(mib)

	var gz bytes.Buffer
	diff := sha256.New()
	gz.Write(member(hdr.Bytes()))
	diff.Write(hdr.Bytes())
	for range size >> 20 {
		gz.Write(zmib)
		diff.Write(mib)
	}
	gz.Write(member(end))
	diff.Write(end)
	return memLayer(t, gz.Bytes(), diff.Sum(nil))
}

// sparseTar is a tar holding one PAX (GNU 0.1) sparse file of size bytes:
// a hole, then data at its end. Go's tar writer cannot write sparse
// entries, so the PAX header is written as a file and retyped.
func sparseTar(t *testing.T, name string, size int64, data string) []byte {
	t.Helper()
	rec := func(k, v string) string {
		s := " " + k + "=" + v + "\n"
		n := len(s)
		for len(strconv.Itoa(n))+len(s) != n {
			n = len(strconv.Itoa(n)) + len(s)
		}
		return strconv.Itoa(n) + s
	}
	pax := rec("GNU.sparse.major", "0") + rec("GNU.sparse.minor", "1") +
		rec("GNU.sparse.name", name) + rec("GNU.sparse.realsize", strconv.FormatInt(size, 10)) +
		rec("GNU.sparse.numblocks", "1") + rec("GNU.sparse.map", fmt.Sprintf("%d,%d", size-int64(len(data)), len(data)))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range []struct {
		hdr  tar.Header
		body string
	}{
		{tar.Header{Typeflag: tar.TypeReg, Name: "PaxHeaders/" + name, Size: int64(len(pax)), Format: tar.FormatUSTAR}, pax},
		{tar.Header{Typeflag: tar.TypeReg, Name: "GNUSparseFile.0/" + name, Size: int64(len(data)), Mode: 0o644, ModTime: epoch, Format: tar.FormatUSTAR}, data},
	} {
		if err := tw.WriteHeader(&e.hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	b[156] = tar.TypeXHeader
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// memBlob is a compressed layer in memory with its diff ID known.
type memBlob struct {
	b      []byte
	digest v1.Hash
	diffID v1.Hash
}

func memLayer(t *testing.T, gz, diffSum []byte) v1.Layer {
	t.Helper()
	sum := sha256.Sum256(gz)
	m := &memBlob{b: gz,
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])},
		diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diffSum)}}
	l, err := partial.CompressedToLayer(m)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (m *memBlob) Digest() (v1.Hash, error)            { return m.digest, nil }
func (m *memBlob) DiffID() (v1.Hash, error)            { return m.diffID, nil }
func (m *memBlob) Size() (int64, error)                { return int64(len(m.b)), nil }
func (m *memBlob) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (m *memBlob) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(m.b)), nil
}
