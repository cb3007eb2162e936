package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/nats-io/nats.go/jetstream"
)

// Blob uploads. ggcr's handler keeps a chunked upload in a growing byte
// slice until its final PUT, under one lock for every upload: an abandoned
// 200 MiB upload held about 512 MiB of the control plane's memory for
// ever, and one slow client stalled every push. Here each upload streams
// to its own file under uploads/, with the running SHA-256 beside it in
// memory, and is copied into the object store once its digest checks. An upload idle for the upload
// timeout is removed, and a blob grows only up to the registry's cap.

// Defaults for Options.
const (
	DefaultUploadTimeout = time.Hour
	DefaultMaxBlobBytes  = 16 << 30
)

// Options tunes a Registry. Zero fields take their defaults.
type Options struct {
	// UploadTimeout is how long an upload may sit idle (no request for
	// it) before it is removed with its file.
	UploadTimeout time.Duration
	// MaxBlobBytes caps one blob's size; a bigger upload is refused with
	// 413. Negative means no cap.
	MaxBlobBytes int64
}

func (o Options) withDefaults() Options {
	if o.UploadTimeout == 0 {
		o.UploadTimeout = DefaultUploadTimeout
	}
	if o.MaxBlobBytes == 0 {
		o.MaxBlobBytes = DefaultMaxBlobBytes
	}
	return o
}

// blobChunk is the object store's chunk size for blobs: a layer of tens
// of MiB is tens of messages, not hundreds.
const blobChunk = 1 << 20

// uploads holds the uploads in progress.
type uploads struct {
	dir   string // uploads/
	blobs jetstream.ObjectStore
	opts  Options
	log   *slog.Logger

	mu sync.Mutex
	m  map[string]*upload
}

// upload is one upload in progress. mu is held by the request writing to
// it; the idle timer removes it only when it can take mu.
type upload struct {
	mu    sync.Mutex
	id    string
	repo  string
	file  *os.File
	size  int64
	sum   hash.Hash // SHA-256 of what was written
	timer *time.Timer
}

func newUploads(dir string, blobs jetstream.ObjectStore, opts Options, log *slog.Logger) (*uploads, error) {
	// Uploads do not survive a restart: the running digests were in memory.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("remove uploads of a previous run: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &uploads{dir: dir, blobs: blobs, opts: opts.withDefaults(), log: log, m: map[string]*upload{}}, nil
}

// uploadTarget parses /v2/<name>/blobs/uploads/[<id>].
func uploadTarget(p string) (repo, id string, ok bool) {
	elem := strings.Split(strings.TrimSuffix(p, "/"), "/")[1:]
	n := len(elem)
	switch {
	case n >= 4 && elem[0] == "v2" && elem[n-2] == "blobs" && elem[n-1] == "uploads":
		return strings.Join(elem[1:n-2], "/"), "", true
	case n >= 5 && elem[0] == "v2" && elem[n-3] == "blobs" && elem[n-2] == "uploads":
		return strings.Join(elem[1:n-3], "/"), elem[n-1], true
	}
	return "", "", false
}

// serve answers a request under /v2/<name>/blobs/uploads/.
func (u *uploads) serve(w http.ResponseWriter, req *http.Request, repo, id string) {
	if id == "" {
		if req.Method != http.MethodPost {
			writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "start an upload with POST /v2/<name>/blobs/uploads/")
			return
		}
		up, err := u.start(repo)
		if err != nil {
			u.log.Error("start upload", "repo", repo, "err", err)
			writeError(w, http.StatusInternalServerError, "UNKNOWN", "cannot start the upload: "+err.Error())
			return
		}
		if dg := req.URL.Query().Get("digest"); dg != "" { // monolithic
			u.finish(w, req, up, dg)
			return
		}
		u.accepted(w, up, http.StatusAccepted)
		u.release(up)
		return
	}
	up := u.take(repo, id)
	if up == nil {
		writeError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN",
			fmt.Sprintf("no upload %q in repository %q: it finished, was cancelled or sat idle longer than %v; start the push again", id, repo, u.opts.UploadTimeout))
		return
	}
	switch req.Method {
	case http.MethodPatch:
		if cr := req.Header.Get("Content-Range"); cr != "" {
			var start, end int64
			if _, err := fmt.Sscanf(strings.TrimPrefix(cr, "bytes="), "%d-%d", &start, &end); err != nil || start != up.size {
				u.release(up)
				w.Header().Set("Range", rangeHeader(up.size))
				writeError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID",
					fmt.Sprintf("Content-Range %q does not continue the upload, which holds %d bytes", cr, up.size))
				return
			}
		}
		if err := u.write(w, req, up); err != nil {
			u.fail(w, up, err)
			return
		}
		u.accepted(w, up, http.StatusAccepted)
		u.release(up)
	case http.MethodPut:
		u.finish(w, req, up, req.URL.Query().Get("digest"))
	case http.MethodGet:
		u.accepted(w, up, http.StatusNoContent)
		u.release(up)
	case http.MethodDelete:
		u.remove(up)
		w.WriteHeader(http.StatusNoContent)
	default:
		u.release(up)
		writeError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", req.Method+" is not an upload method: use PATCH, PUT, GET or DELETE")
	}
}

// start makes a new upload, held (its mu locked) by the caller.
func (u *uploads) start(repo string) (*upload, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(b[:])
	f, err := os.OpenFile(filepath.Join(u.dir, id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	up := &upload{id: id, repo: repo, file: f, sum: sha256.New()}
	up.mu.Lock()
	up.timer = time.AfterFunc(u.opts.UploadTimeout, func() { u.expire(up) })
	u.mu.Lock()
	u.m[id] = up
	u.mu.Unlock()
	return up, nil
}

// take returns upload id of repo, held by the caller, or nil.
func (u *uploads) take(repo, id string) *upload {
	u.mu.Lock()
	up := u.m[id]
	u.mu.Unlock()
	if up == nil || up.repo != repo {
		return nil
	}
	up.mu.Lock()
	if up.file == nil { // removed while we waited
		up.mu.Unlock()
		return nil
	}
	up.timer.Stop()
	return up
}

// release lets go of a held upload and starts its idle time again.
func (u *uploads) release(up *upload) {
	up.timer.Reset(u.opts.UploadTimeout)
	up.mu.Unlock()
}

// expire removes an upload left idle, unless a request holds it.
func (u *uploads) expire(up *upload) {
	if !up.mu.TryLock() {
		return // in use: its request resets the timer when done
	}
	if up.file == nil {
		up.mu.Unlock()
		return
	}
	u.log.Info("removing an abandoned upload", "repo", up.repo, "upload", up.id, "bytes", up.size, "idle", u.opts.UploadTimeout)
	u.remove(up)
}

// remove deletes a held upload and its file, and releases it.
func (u *uploads) remove(up *upload) {
	up.timer.Stop()
	u.mu.Lock()
	delete(u.m, up.id)
	u.mu.Unlock()
	if up.file != nil {
		up.file.Close()
		if err := os.Remove(up.file.Name()); err != nil && !errors.Is(err, os.ErrNotExist) {
			u.log.Warn("remove upload file", "path", up.file.Name(), "err", err)
		}
		up.file = nil
	}
	up.mu.Unlock()
}

// errTooBig is a blob over the registry's cap.
var errTooBig = errors.New("blob too big")

// write appends the request body to a held upload.
func (u *uploads) write(w http.ResponseWriter, req *http.Request, up *upload) error {
	body := io.Reader(req.Body)
	if u.opts.MaxBlobBytes >= 0 {
		body = http.MaxBytesReader(w, req.Body, u.opts.MaxBlobBytes-up.size)
	}
	n, err := io.Copy(io.MultiWriter(up.file, up.sum), body)
	up.size += n
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errTooBig
	}
	if err != nil {
		return fmt.Errorf("receive blob: %w", err)
	}
	return nil
}

// fail answers a failed write and drops the upload.
func (u *uploads) fail(w http.ResponseWriter, up *upload, err error) {
	u.remove(up)
	if errors.Is(err, errTooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID",
			fmt.Sprintf("blob larger than this registry's limit of %d bytes (%d MiB); the upload is cancelled: push smaller layers", u.opts.MaxBlobBytes, u.opts.MaxBlobBytes>>20))
		return
	}
	u.log.Warn("upload failed", "repo", up.repo, "upload", up.id, "err", err)
	writeError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", err.Error()+"; the upload is cancelled: push again")
}

// finish appends the request body to a held upload, checks it against
// digest and moves it into the blob store.
func (u *uploads) finish(w http.ResponseWriter, req *http.Request, up *upload, digest string) {
	h, err := v1.NewHash(digest)
	if err != nil || h.Algorithm != "sha256" {
		u.release(up)
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID", fmt.Sprintf("digest %q: want sha256:<64 hex digits>", digest))
		return
	}
	if err := u.write(w, req, up); err != nil {
		u.fail(w, up, err)
		return
	}
	if got := hex.EncodeToString(up.sum.Sum(nil)); got != h.Hex {
		size := up.size
		u.remove(up)
		writeError(w, http.StatusBadRequest, "DIGEST_INVALID",
			fmt.Sprintf("the %d bytes uploaded have digest sha256:%s, not %s; the upload is cancelled: push again", size, got, digest))
		return
	}
	if err := u.store(req.Context(), up, h); err != nil {
		u.remove(up)
		u.log.Error("store blob", "digest", h, "err", err)
		writeError(w, http.StatusServiceUnavailable, "UNKNOWN",
			"cannot store the blob in the control plane's state ("+err.Error()+
				"); push again once a majority of the control plane's servers is up (perch server status)")
		return
	}
	u.remove(up)
	w.Header().Set("Location", "/"+path.Join("v2", up.repo, "blobs", h.String()))
	w.Header().Set("Docker-Content-Digest", h.String())
	w.WriteHeader(http.StatusCreated)
}

// store copies a held upload's file into the object store under its
// digest, unless a blob of that digest is there already.
func (u *uploads) store(ctx context.Context, up *upload, h v1.Hash) error {
	if info, err := u.blobs.GetInfo(ctx, h.String()); err == nil && int64(info.Size) == up.size {
		return nil
	}
	if _, err := up.file.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err := u.blobs.Put(ctx, jetstream.ObjectMeta{Name: h.String(), Opts: &jetstream.ObjectMetaOptions{ChunkSize: blobChunk}}, up.file)
	return err
}

// accepted answers with where the held upload continues and what it holds.
func (u *uploads) accepted(w http.ResponseWriter, up *upload, status int) {
	w.Header().Set("Location", "/"+path.Join("v2", up.repo, "blobs/uploads", up.id))
	w.Header().Set("Docker-Upload-UUID", up.id)
	w.Header().Set("Range", rangeHeader(up.size))
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(status)
}

// rangeHeader is the Range of an upload holding size bytes ("0-0" for
// none, as registries answer).
func rangeHeader(size int64) string {
	return fmt.Sprintf("0-%d", max(size-1, 0))
}
