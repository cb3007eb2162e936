package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

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

func isManifestRead(req *http.Request) bool {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return false
	}
	_, _, ok := manifestTarget(req.URL.Path)
	return ok
}

// publishTimeout bounds storing a manifest write on the stream: a
// cluster without a quorum fails the push rather than holding it.
const publishTimeout = 10 * time.Second

// writeManifest applies a manifest PUT or DELETE, stores it on the stream
// once the handler has accepted it, and answers once this server has
// applied the stream up to it.
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
	// Pushing the same manifest again changes nothing; storing it would
	// only grow the stream on every re-push.
	unchanged := rec.Op == opPut && r.holds(req.Context(), rec)
	rw := r.apply(req.Context(), rec)
	r.mu.Unlock()
	if success(rw.code) && !unchanged {
		b, err := json.Marshal(rec)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "UNKNOWN", err.Error())
			return
		}
		ctx, cancel := context.WithTimeout(req.Context(), publishTimeout)
		ack, err := r.shared.JS.Publish(ctx, r.shared.Subject, b)
		cancel()
		if err != nil {
			r.log.Error("manifest accepted but not stored; it is lost at this server's restart and unknown to the others",
				"name", name, "reference", ref, "err", err)
			writeError(w, http.StatusServiceUnavailable, "UNKNOWN",
				"could not store the manifest in the control plane's state ("+err.Error()+
					"); push again once a majority of the control plane's servers is up (perch server status)")
			return
		}
		ctx, cancel = context.WithTimeout(req.Context(), publishTimeout)
		if err := r.follower.upTo(ctx, ack.Sequence); err != nil {
			r.log.Warn("manifest stored but not yet applied here", "name", name, "reference", ref, "seq", ack.Sequence, "err", err)
		}
		cancel()
	}
	rw.copyTo(w)
}

// readManifest answers a manifest GET or HEAD. A miss first catches up
// with the stream: another server may have stored it a moment ago.
func (r *Registry) readManifest(w http.ResponseWriter, req *http.Request) {
	rw := r.record(req)
	if rw.code == http.StatusNotFound && r.catchUp(req.Context()) == nil {
		rw = r.record(req)
	}
	rw.copyTo(w)
}

// record runs req through the ggcr handler and returns its answer.
func (r *Registry) record(req *http.Request) *recorder {
	rw := &recorder{header: http.Header{}}
	r.inner.ServeHTTP(rw, req)
	return rw
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

func success(code int) bool { return code >= 200 && code < 300 }

// recorder buffers a handler's answer so it is sent only after the
// manifest write is stored.
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
