package registry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// maxManifestSize bounds a manifest body, as the distribution project does.
const maxManifestSize = 4 << 20

// manifestTarget splits /v2/<name>/manifests/<reference> the way the ggcr
// handler does, so both agree on what a request addresses.
func manifestTarget(p string) (name, ref string, ok bool) {
	elem := strings.Split(p, "/")[1:]
	if len(elem) < 4 || elem[len(elem)-2] != "manifests" || isBlobPath(elem) {
		return "", "", false
	}
	return strings.Join(elem[1:len(elem)-2], "/"), elem[len(elem)-1], true
}

// isBlobPath mirrors ggcr's isBlob, which it checks before manifests.
func isBlobPath(elem []string) bool {
	if elem[len(elem)-1] == "" {
		elem = elem[:len(elem)-1]
	}
	n := len(elem)
	return n >= 3 && (elem[n-2] == "blobs" || (elem[n-3] == "blobs" && elem[n-2] == "uploads"))
}

func isManifestWrite(req *http.Request) bool {
	if req.Method != http.MethodPut && req.Method != http.MethodDelete {
		return false
	}
	_, _, ok := manifestTarget(req.URL.Path)
	return ok
}

// writeManifest applies a manifest PUT or DELETE and journals it once the
// handler has accepted it.
func (r *Registry) writeManifest(w http.ResponseWriter, req *http.Request) {
	name, ref, _ := manifestTarget(req.URL.Path)
	rec := record{Op: opDelete, Name: name, Reference: ref}
	if req.Method == http.MethodPut {
		body, err := io.ReadAll(io.LimitReader(req.Body, maxManifestSize+1))
		if err != nil {
			writeError(w, http.StatusBadRequest, "MANIFEST_INVALID", "reading manifest: "+err.Error())
			return
		}
		if len(body) > maxManifestSize {
			writeError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID",
				fmt.Sprintf("manifest is larger than %d bytes", maxManifestSize))
			return
		}
		// ggcr stores a body under whatever digest it is PUT to; refuse
		// a mismatch so a digest always names its content.
		if want, err := v1.NewHash(ref); err == nil {
			if got, _, _ := v1.SHA256(bytes.NewReader(body)); got != want {
				writeError(w, http.StatusBadRequest, "DIGEST_INVALID",
					fmt.Sprintf("manifest digest is %s, not %s as in the URL", got, want))
				return
			}
		}
		rec.Op, rec.ContentType, rec.Body = opPut, req.Header.Get("Content-Type"), body
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	// Pushing the same manifest again changes nothing; journaling it would
	// only grow the journal on every re-push.
	unchanged := rec.Op == opPut && r.holds(req.Context(), rec)
	rw := r.apply(req.Context(), rec)
	if success(rw.code) && !unchanged {
		if err := r.journal.append(rec); err != nil {
			r.log.Error("manifest accepted but not saved; it will be lost on restart",
				"name", name, "reference", ref, "err", err)
			writeError(w, http.StatusInternalServerError, "UNKNOWN",
				"could not save the manifest to disk: "+err.Error()+"; push again once the server's disk is writable")
			return
		}
	}
	rw.copyTo(w)
}

// holds reports whether the handler already serves rec's body and content
// type under both rec's reference and its digest.
func (r *Registry) holds(ctx context.Context, rec record) bool {
	dg, _, _ := v1.SHA256(bytes.NewReader(rec.Body))
	for _, ref := range []string{rec.Reference, dg.String()} {
		rw := r.send(ctx, http.MethodGet, rec.Name, ref, "", nil)
		if rw.code != http.StatusOK || rw.header.Get("Content-Type") != rec.ContentType ||
			!bytes.Equal(rw.body.Bytes(), rec.Body) {
			return false
		}
	}
	return true
}

// apply sends rec to the ggcr handler and returns its recorded answer.
func (r *Registry) apply(ctx context.Context, rec record) *recorder {
	method := http.MethodPut
	if rec.Op == opDelete {
		method = http.MethodDelete
	}
	return r.send(ctx, method, rec.Name, rec.Reference, rec.ContentType, rec.Body)
}

// send makes an in-process manifest request to the ggcr handler. The URL is
// built from its parts, not parsed, so any name the handler accepted over
// HTTP round-trips unchanged.
func (r *Registry) send(ctx context.Context, method, name, ref, contentType string, body []byte) *recorder {
	req := (&http.Request{
		Method:        method,
		URL:           &url.URL{Path: "/v2/" + name + "/manifests/" + ref},
		Header:        http.Header{},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
	}).WithContext(ctx)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	rw := &recorder{header: http.Header{}}
	r.inner.ServeHTTP(rw, req)
	return rw
}

// replay feeds the journal to the fresh handler, oldest record first.
func (r *Registry) replay() error {
	seqs, err := listRecords(r.journal.dir)
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		rec, err := r.journal.read(seq)
		if err != nil {
			return err
		}
		if rw := r.apply(context.Background(), rec); !success(rw.code) {
			r.log.Warn("manifest journal record rejected on replay", "record", r.journal.path(seq),
				"op", rec.Op, "name", rec.Name, "reference", rec.Reference,
				"status", rw.code, "body", strings.TrimSpace(rw.body.String()))
		}
	}
	if len(seqs) > 0 {
		r.log.Info("restored manifests", "records", len(seqs))
	}
	return nil
}

func success(code int) bool { return code >= 200 && code < 300 }

// recorder buffers a handler's answer so it is sent only after the journal
// write has succeeded.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (rw *recorder) Header() http.Header { return rw.header }

func (rw *recorder) WriteHeader(code int) {
	if rw.code == 0 {
		rw.code = code
	}
}

func (rw *recorder) Write(b []byte) (int, error) {
	rw.WriteHeader(http.StatusOK)
	return rw.body.Write(b)
}

func (rw *recorder) copyTo(w http.ResponseWriter) {
	for k, v := range rw.header {
		w.Header()[k] = v
	}
	if rw.code == 0 {
		rw.code = http.StatusOK
	}
	w.WriteHeader(rw.code)
	w.Write(rw.body.Bytes())
}
