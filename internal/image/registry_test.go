package image

import (
	"bytes"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// countingRegistry is ggcr's in-memory registry behind a counter of the
// requests a pull makes.
type countingRegistry struct {
	*httptest.Server
	Host     string
	requests atomic.Int64
	blobGets atomic.Int64
}

func startCountingRegistry(t *testing.T) *countingRegistry {
	t.Helper()
	return serveCounting(t, ggcr.New(ggcr.Logger(log.New(io.Discard, "", 0))))
}

func serveCounting(t *testing.T, h http.Handler) *countingRegistry {
	t.Helper()
	r := &countingRegistry{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobGets.Add(1)
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(r.Close)
	r.Host = strings.TrimPrefix(r.URL, "http://")
	return r
}

func (r *countingRegistry) reset() { r.requests.Store(0); r.blobGets.Store(0) }

// push writes img to the registry as repo:tag and returns the reference.
func (r *countingRegistry) push(t *testing.T, repoTag string, img v1.Image, opts ...remote.Option) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	r.reset()
	return ref.String()
}

// sampleImage stores the sample layers gzip, uncompressed and zstd, the
// three encodings a pull must read.
func sampleImage(t *testing.T) v1.Image {
	t.Helper()
	ls := sampleLayers(t)
	opener := func(b []byte) tarball.Opener {
		return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	}
	gz, err := tarball.LayerFromOpener(opener(ls[0]))
	if err != nil {
		t.Fatal(err)
	}
	plain := static.NewLayer(ls[1], types.OCIUncompressedLayer)
	zst, err := tarball.LayerFromOpener(opener(ls[2]), tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, gz, plain, zst)
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.Config(img, sampleConfig())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func sampleConfig() v1.Config {
	return v1.Config{
		Entrypoint:   []string{"/bin/sh", "-c"},
		Cmd:          []string{"exec app"},
		Env:          []string{"PATH=/bin", "GREETING=hi"},
		WorkingDir:   "/app",
		User:         "1000:1000",
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
	}
}

// oneFileImage is an image whose only layer holds one file.
func oneFileImage(t *testing.T, path, content string) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(layerTar(t, file(path, content, 0o644)), types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	return img
}
