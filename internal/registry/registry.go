// Package registry is the OCI registry the control plane serves under /v2/,
// beside the API and behind the same tokens, so that crane, skopeo and docker
// can push images and agents can pull them. The server package mounts it.
//
// It is go-containerregistry's registry with its state in NATS JetStream,
// so that every server of a cluster serves every image and an image
// outlives the server it was pushed to: blobs in an object store, named
// by digest, and every accepted manifest PUT and DELETE on a stream.
// ggcr keeps manifests in memory only, so each server follows the stream
// from its start into its own handler (manifests.go); a write is answered
// once this server has applied it in the stream's order.
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// Shared is where a registry keeps its state: what every server of a
// cluster reads and writes.
type Shared struct {
	JS jetstream.JetStream
	// Blobs holds each blob under its digest ("sha256:<hex>").
	Blobs jetstream.ObjectStore
	// Stream holds the manifest writes, published on Subject.
	Stream, Subject string
}

// Registry is an http.Handler serving the OCI distribution API under /v2/.
type Registry struct {
	inner  http.Handler
	auth   Authorizer
	log    *slog.Logger
	shared Shared

	// mu orders this server's own manifest writes with those it applies
	// from the stream.
	mu       sync.Mutex
	follower *follower

	uploads *uploads
	onClose func() // NewStandalone's NATS
}

// New opens a registry keeping its state in sh; dir holds uploads in
// progress (and, from an earlier version, blobs and a manifest journal on
// disk, moved into sh at the first start). auth decides what a Perch API
// token may do; every request must carry one, as a bearer token or as the
// password of HTTP basic auth. A nil log discards. It returns once every
// manifest already on the stream is served; Close stops following it.
func New(ctx context.Context, dir string, sh Shared, auth Authorizer, opts Options, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	if err := importLocal(ctx, dir, sh, log); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	ups, err := newUploads(filepath.Join(dir, "uploads"), sh.Blobs, opts, log)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r := &Registry{
		inner: ggcr.New(
			ggcr.WithBlobHandler(objectBlobs{sh.Blobs}),
			// ggcr logs every request; keep that at debug level.
			ggcr.Logger(slog.NewLogLogger(log.Handler(), slog.LevelDebug)),
		),
		auth:    auth,
		log:     log,
		shared:  sh,
		uploads: ups,
	}
	f, err := r.follow(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r.follower = f
	return r, nil
}

// Close stops following the manifest stream (and NewStandalone's NATS).
func (r *Registry) Close() {
	r.follower.stop()
	if r.onClose != nil {
		r.onClose()
	}
}

// ServeHTTP implements http.Handler.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if !r.authorize(w, req) {
		return
	}
	if repo, id, ok := uploadTarget(req.URL.Path); ok {
		r.uploads.serve(w, req, repo, id) // capped at Options.MaxBlobBytes
		return
	}
	// Nothing else takes more than a manifest.
	req.Body = http.MaxBytesReader(w, req.Body, maxManifestSize+1)
	if isManifestWrite(req) {
		r.writeManifest(w, req)
		return
	}
	if isManifestRead(req) {
		r.readManifest(w, req)
		return
	}
	r.inner.ServeHTTP(w, req)
}

// objectBlobs is ggcr's blob handler over the object store.
type objectBlobs struct{ obs jetstream.ObjectStore }

var (
	_ ggcr.BlobHandler     = objectBlobs{}
	_ ggcr.BlobStatHandler = objectBlobs{}
)

func (b objectBlobs) Stat(ctx context.Context, _ string, h v1.Hash) (int64, error) {
	info, err := b.obs.GetInfo(ctx, h.String())
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return 0, ggcr.ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", h, err)
	}
	return int64(info.Size), nil
}

func (b objectBlobs) Get(ctx context.Context, _ string, h v1.Hash) (io.ReadCloser, error) {
	res, err := b.obs.Get(ctx, h.String())
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, ggcr.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", h, err)
	}
	return res, nil
}
