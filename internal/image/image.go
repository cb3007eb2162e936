// Package image turns an image reference into a root filesystem on disk:
// it resolves the reference in its registry (the Perch registry or any
// other), downloads the layers into a cache keyed by digest, and unpacks
// them in order, whiteouts applied, into a directory the runtime drivers
// use as a machine's root. The agent imports it.
//
// Where overlayfs works (as root), layers are unpacked once each and
// shared between images (layerstore.go); elsewhere each image is unpacked
// whole. Layout under the store's directory:
//
//	blobs/sha256/<hex>           compressed layers being downloaded or not yet unpacked
//	layers/sha256/<hex>/fs       an unpacked layer (by diff ID), overlayfs lower dir
//	images/sha256/<hex>/layers.json  an image's layers (by manifest digest)
//	images/sha256/<hex>/rootfs   or its whole unpacked root filesystem (no overlayfs)
//	images/sha256/<hex>/config.json
//	images/sha256/<hex>/used     touched on each use: garbage collection is least recently used first
//	tmp/                         downloads and unpacks in progress
//
// Everything lands in its final place by rename, so a reader sees a whole
// blob or image or none, and a crash leaves only tmp/ to clean.
package image

import (
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Store pulls and unpacks images under one directory. It is safe for
// concurrent use; pulls of the same image wait for each other.
type Store struct {
	dir     string
	log     *slog.Logger
	locks   keyedMutex
	layered bool
	limits  Limits
	// gc excludes pulls (read) while GC removes images and layers.
	gc sync.RWMutex
}

// Options says how to reach registries.
type Options struct {
	// Tokens maps a registry host, as written in image references
	// ("127.0.0.1:4280"), to the Perch API token it accepts. It is sent as
	// HTTP basic auth with user "x", and only to that host; other
	// registries are asked anonymously.
	Tokens map[string]string
	// Insecure allows plain HTTP to any registry. Loopback and private
	// addresses (the dev registry) are reached over HTTP without it.
	Insecure bool
	// Platform picks the image out of a multi-platform index, as
	// "os/arch[/variant]". Empty means linux/amd64.
	Platform string
}

// Image is a pulled image, unpacked.
type Image struct {
	// Ref names exactly this image: repository@sha256:… of the manifest
	// unpacked (the platform's manifest when the reference was an index).
	Ref string
	// Digest is that manifest's digest, "sha256:…".
	Digest string
	// Layers are the image's unpacked layers, topmost first: overlayfs
	// lower directories to stack (whiteouts are 0:0 character devices,
	// opaque directories carry trusted.overlay.opaque). Empty when the
	// store unpacks whole images; then Rootfs is the root filesystem.
	// Either is shared by every machine of the image: treat it as
	// read-only.
	Layers []string
	Rootfs string
	// Config is the image's run configuration: entrypoint, cmd, env,
	// working dir, user, exposed ports.
	Config v1.Config
}

// staleAge is how old a tmp/ entry must be before New removes it as the
// leftover of a crashed pull; younger ones may belong to another process
// pulling into the same directory.
const staleAge = time.Hour

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithLimits bounds what unpacking one image may write (limits.go);
// without it the default Limits apply.
func WithLimits(l Limits) StoreOption {
	return func(s *Store) { s.limits = l }
}

// New returns a store over dir. A nil log discards.
func New(dir string, log *slog.Logger, opts ...StoreOption) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, log: log}
	for _, o := range opts {
		o(s)
	}
	s.removeStale()
	if err := probeOverlay(s.tmpDir()); err != nil {
		log.Info("overlayfs unavailable: each image is unpacked whole, layers are not shared", "err", err)
	} else {
		s.layered = true
	}
	return s
}

// Lowers is the image's root filesystem as overlayfs lower directories,
// topmost first: its layers, or its one unpacked tree.
func (img *Image) Lowers() []string {
	if len(img.Layers) > 0 {
		return img.Layers
	}
	return []string{img.Rootfs}
}

func (s *Store) tmpDir() string { return filepath.Join(s.dir, "tmp") }

func (s *Store) blobPath(h v1.Hash) string {
	return filepath.Join(s.dir, "blobs", h.Algorithm, h.Hex)
}

func (s *Store) imageDir(h v1.Hash) string {
	return filepath.Join(s.dir, "images", h.Algorithm, h.Hex)
}

func (s *Store) removeStale() {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) < staleAge {
			continue
		}
		p := filepath.Join(s.tmpDir(), e.Name())
		if err := os.RemoveAll(p); err != nil {
			s.log.Warn("remove leftover of an interrupted pull", "path", p, "err", err)
		}
	}
}
