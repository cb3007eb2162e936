package server

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, api.Error{Error: msg, Status: errorStatus(code)})
}

// errorStatus is the short code of Fly's error bodies for an HTTP status.
func errorStatus(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "invalid_argument"
	case http.StatusUnauthorized:
		return "unauthenticated"
	case http.StatusForbidden:
		return "permission_denied"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusRequestTimeout:
		return "deadline_exceeded"
	case http.StatusConflict:
		return "conflict"
	case http.StatusPreconditionFailed:
		return "failed_precondition"
	case http.StatusRequestEntityTooLarge:
		return "too_large"
	case http.StatusUnprocessableEntity:
		return "insufficient_capacity"
	case http.StatusNotImplemented:
		return "unimplemented"
	}
	if code >= 500 {
		return "internal"
	}
	return "unknown"
}

// httpError carries a status code with a message for the user, and the
// Fly status code when it is not the one errorStatus gives.
type httpError struct {
	code   int
	msg    string
	status string
	// retryAfter, if set, is sent as the answer's Retry-After.
	retryAfter string
}

func (e *httpError) Error() string { return e.msg }

func errf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// nameTaken is the 409 for a name in use, with Fly's "name_taken" code.
func nameTaken(format string, args ...any) error {
	return &httpError{code: http.StatusConflict, msg: fmt.Sprintf(format, args...), status: "name_taken"}
}

// fail writes err with the status it maps to.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if qe := s.quorumError(err); qe != nil { // quorum.go
		s.log.Warn("request failed: no quorum", "method", r.Method, "path", r.URL.Path, "err", err)
		err = qe
	}
	switch {
	case errors.As(err, &he):
		if he.retryAfter != "" {
			w.Header().Set("Retry-After", he.retryAfter)
		}
		writeJSON(w, he.code, api.Error{Error: he.msg, Status: cmp.Or(he.status, errorStatus(he.code))})
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, scheduler.ErrUnplaceable):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error: "+err.Error())
	}
}

// maxBodyBytes bounds every request body but the registry's: the API
// takes small JSON documents, and a body is read before it is checked.
const maxBodyBytes = 1 << 20

func bodyTooLarge() error {
	return errf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes (1 MiB), the API's limit; send only the JSON object the endpoint takes", maxBodyBytes)
}

// limitBodies caps request bodies at maxBodyBytes, refusing a declared
// larger one at once and cutting a streamed one off there (decode answers
// 413). The registry under /v2/ has its own caps (blobs, manifests).
func (s *Server) limitBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v2/") || r.URL.Path == "/v2" {
			h.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > maxBodyBytes {
			s.fail(w, r, bodyTooLarge())
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		h.ServeHTTP(w, r)
	})
}

// decode reads a JSON body into v. The body must be exactly one JSON
// value: anything after it but white space is refused (400), so that a
// client's mistake (two objects, a stray brace) is not half-read.
func decode(r *http.Request, v any) error {
	_, err := decodeBody(r, v)
	return err
}

// decodeBody is decode that also returns the body read.
func decodeBody(r *http.Request, v any) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, bodyTooLarge()
		}
		return nil, errf(http.StatusBadRequest, "reading the request body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errf(http.StatusBadRequest, "request body is empty; send a JSON object")
		}
		return nil, errf(http.StatusBadRequest, "request body is not valid JSON: %v", err)
	}
	end := dec.InputOffset()
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errf(http.StatusBadRequest, "request body has data after its JSON value (from byte %d); send exactly one JSON object", end)
	}
	return body, nil
}

// ids: host and machine ids become NATS keys and subjects and file names
// on hosts, so only these characters pass.
var idRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

const idRule = "1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit"

// validID checks the id of a kind ("host", "machine", "region").
func validID(kind, id string) error {
	if !idRE.MatchString(id) {
		if len(id) > 80 {
			id = id[:80] + "…"
		}
		return errf(http.StatusBadRequest, "%s id %q is not valid: want %s", kind, id, idRule)
	}
	return nil
}
