package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/image"
)

// staticCopies are the [[statics]] directories of images, copied out once
// per image and directory under <state>/statics for the edge to serve
// (edge.StaticFiles): at a machine's create, which fails the machine when
// a guest_path is not a directory inside its image, or on an edge's first
// request for an image this host runs no machine of.
type staticCopies struct {
	images func() *image.Store
	pull   image.Options
	dir    string

	mu       sync.Mutex
	done     map[string]string        // key -> directory
	failed   map[string]staticFailure // key -> the last failure, kept a while
	inflight map[string]chan struct{}
}

type staticFailure struct {
	err error
	at  time.Time
}

// staticRetry is how long a failed copy is answered from memory before
// the next request tries again.
const staticRetry = 30 * time.Second

var _ interface {
	StaticDir(ctx context.Context, ref, dir string) (string, error)
} = (*staticCopies)(nil)

func newStaticCopies(dir string, images func() *image.Store, pull image.Options) *staticCopies {
	return &staticCopies{
		images: images, pull: pull, dir: dir,
		done: map[string]string{}, failed: map[string]staticFailure{}, inflight: map[string]chan struct{}{},
	}
}

// staticKey names the copy of dir of the image ref: <digest>/<dir's hash>,
// so that collect removes an image's copies together.
func staticKey(ref, dir string) (string, error) {
	_, digest, ok := strings.Cut(ref, "@")
	if !ok {
		return "", fmt.Errorf("image %s is not named by digest", ref)
	}
	algo, hexDigest, ok := strings.Cut(digest, ":")
	if !ok || algo != "sha256" || len(hexDigest) != 64 || strings.ContainsAny(hexDigest, "./") {
		return "", fmt.Errorf("image %s has no sha256 digest", ref)
	}
	sum := sha256.Sum256([]byte(filepath.Clean(dir)))
	return filepath.Join(hexDigest, hex.EncodeToString(sum[:12])), nil
}

// collect removes the copies of images not in keep (by digest,
// "sha256:…") made more than minAge ago (a younger one may be for a
// machine being made), as the image GC runs.
func (s *staticCopies) collect(keep map[string]bool, minAge time.Duration) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || keep["sha256:"+e.Name()] || time.Since(fi.ModTime()) < minAge {
			continue
		}
		s.mu.Lock()
		for k := range s.done {
			if strings.HasPrefix(k, e.Name()+string(filepath.Separator)) {
				delete(s.done, k)
			}
		}
		s.mu.Unlock()
		if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
			continue
		}
	}
}

// StaticDir is dir of the image ref on this host's disk, copied on first
// use (pulling the image if this host lacks it).
func (s *staticCopies) StaticDir(ctx context.Context, ref, dir string) (string, error) {
	key, err := staticKey(ref, dir)
	if err != nil {
		return "", err
	}
	for {
		s.mu.Lock()
		if p, ok := s.done[key]; ok {
			s.mu.Unlock()
			return p, nil
		}
		if f, ok := s.failed[key]; ok && time.Since(f.at) < staticRetry {
			s.mu.Unlock()
			return "", f.err
		}
		wait, busy := s.inflight[key]
		if !busy {
			ch := make(chan struct{})
			s.inflight[key] = ch
			s.mu.Unlock()
			p, err := s.copy(key, ref, dir, nil)
			s.mu.Lock()
			delete(s.inflight, key)
			if err != nil {
				s.failed[key] = staticFailure{err: err, at: time.Now()}
			} else {
				s.done[key] = p
				delete(s.failed, key)
			}
			close(ch)
			s.mu.Unlock()
			return p, err
		}
		s.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// prepare copies a new machine's statics out of its image, so that the
// edges find them at once and a guest_path the image lacks fails the
// machine, and with it the deploy, with the reason.
func (s *staticCopies) prepare(img *image.Image, statics []api.Static) error {
	for _, st := range statics {
		key, err := staticKey(img.Ref, st.GuestPath)
		if err != nil {
			return err
		}
		p, err := s.copy(key, img.Ref, st.GuestPath, img)
		if err != nil {
			return fmt.Errorf("[[statics]] guest_path %s: %w", st.GuestPath, err)
		}
		s.mu.Lock()
		s.done[key] = p
		delete(s.failed, key)
		s.mu.Unlock()
	}
	return nil
}

// copy makes the copy of dir under key unless it is on disk already;
// img is the image when the caller has pulled it.
func (s *staticCopies) copy(key, ref, dir string, img *image.Image) (string, error) {
	dst := filepath.Join(s.dir, key)
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		return dst, nil
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", fmt.Errorf("statics: %w", err)
	}
	store := s.images()
	if store == nil {
		return "", errors.New("statics: the image store is not open yet")
	}
	if img == nil {
		// A request is not left waiting on a registry for long.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var err error
		if img, err = store.Pull(ctx, ref, s.pull); err != nil {
			return "", fmt.Errorf("statics: %w", err)
		}
	}
	if err := store.CopyDir(img, dir, dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return dst, nil // another copy of the same got there first
		}
		return "", err
	}
	return dst, nil
}
