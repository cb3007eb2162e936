// Package registry is the OCI registry the control plane serves under /v2/,
// beside the API and behind the same tokens, so that crane, skopeo and docker
// can push images and agents can pull them. The server package mounts it.
//
// It is go-containerregistry's registry with blobs on disk. That registry
// keeps manifests in memory only, so this package journals every accepted
// manifest PUT and DELETE to disk and replays the journal into a fresh
// handler on start: pushed images survive a restart.
package registry

import (
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
)

// Registry is an http.Handler serving the OCI distribution API under /v2/.
type Registry struct {
	inner http.Handler
	auth  Authorizer
	log   *slog.Logger

	// mu orders manifest writes so the journal replays them in the order
	// the handler applied them.
	mu      sync.Mutex
	journal *journal

	uploads *uploads
}

// New opens (or creates) a registry whose blobs and manifest journal live in
// dir. auth decides what a Perch API token may do; every request must
// carry one, as a bearer token or as the password of HTTP basic auth. A nil
// log discards.
func New(dir string, auth Authorizer, opts Options, log *slog.Logger) (*Registry, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	blobs := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	removeStaleUploads(blobs, log)
	ups, err := newUploads(filepath.Join(dir, "uploads"), blobs, opts, log)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	j, err := openJournal(filepath.Join(dir, "manifests"))
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r := &Registry{
		inner: ggcr.New(
			ggcr.WithBlobHandler(ggcr.NewDiskBlobHandler(blobs)),
			// ggcr logs every request; keep that at debug level.
			ggcr.Logger(slog.NewLogLogger(log.Handler(), slog.LevelDebug)),
		),
		auth:    auth,
		log:     log,
		journal: j,
		uploads: ups,
	}
	if err := r.replay(); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return r, nil
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
	r.inner.ServeHTTP(w, req)
}

// removeStaleUploads deletes the temporary files ggcr's disk blob handler
// left behind when a push was cut off mid-blob (before uploads.go took
// uploads over).
func removeStaleUploads(dir string, log *slog.Logger) {
	stale, _ := filepath.Glob(filepath.Join(dir, "upload-*"))
	for _, p := range stale {
		if err := os.Remove(p); err != nil {
			log.Warn("remove stale upload", "path", p, "err", err)
		}
	}
}
