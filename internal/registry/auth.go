package registry

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
)

// Access is what a request does: read or write one repository, or list
// them all (the catalog). Repo is "" for the base endpoint /v2/.
type Access struct {
	Repo    string
	Push    bool
	Catalog bool
	// Blob: the request is under /v2/<name>/blobs/ (blobs are stored by
	// digest, shared by every repository).
	Blob bool
}

// Authorizer decides whether a token may make an access. An error wrapping
// ErrDenied is a 403 (known token, not its repository); any other error is
// a 401 (no valid token).
type Authorizer interface {
	Authorize(req *http.Request, token string, a Access) error
}

// ErrDenied is an Authorizer's answer for a valid token without the right
// to the repository.
var ErrDenied = errors.New("denied")

// TokenFunc is an Authorizer for one kind of token that reaches every
// repository (tests, and registries with a single user).
type TokenFunc func(token string) bool

// Authorize implements Authorizer.
func (f TokenFunc) Authorize(_ *http.Request, token string, _ Access) error {
	if token == "" || !f(token) {
		return errors.New("invalid credentials")
	}
	return nil
}

// token is the Perch token of a request: a bearer token (perch's own
// clients) or a basic-auth password with any user name (what crane, skopeo
// and docker send after `login -u x -p TOKEN`).
func token(req *http.Request) string {
	h := req.Header.Get("Authorization")
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok)
	}
	if _, pw, ok := req.BasicAuth(); ok {
		return pw
	}
	return ""
}

// repoPathRE splits /v2/<name>/(manifests|blobs|tags|referrers)/...: the name is the
// longest prefix (names may hold slashes).
var repoPathRE = regexp.MustCompile(`^/v2/(.+)/(manifests|blobs|tags|referrers)/`)

// accessOf is what req does.
func accessOf(req *http.Request) Access {
	push := req.Method != http.MethodGet && req.Method != http.MethodHead
	p := req.URL.Path
	if p == "/v2/_catalog" {
		return Access{Catalog: true}
	}
	if m := repoPathRE.FindStringSubmatch(p); m != nil {
		return Access{Repo: m[1], Push: push, Blob: m[2] == "blobs"}
	}
	return Access{Push: push}
}

// authorize checks every access req makes (a cross-repository mount reads
// its source too) and answers 401 or 403 itself when one is refused.
func (r *Registry) authorize(w http.ResponseWriter, req *http.Request) bool {
	tok := token(req)
	if tok == "" {
		unauthorized(w, req)
		return false
	}
	acc := []Access{accessOf(req)}
	if from := req.URL.Query().Get("from"); from != "" && acc[0].Repo != "" {
		acc = append(acc, Access{Repo: from})
	}
	for _, a := range acc {
		if err := r.auth.Authorize(req, tok, a); err != nil {
			if errors.Is(err, ErrDenied) {
				writeError(w, http.StatusForbidden, "DENIED", err.Error())
				return false
			}
			unauthorized(w, req)
			return false
		}
	}
	return true
}

// unauthorized answers with a Basic challenge, which makes standard clients
// retry with the credentials they hold for this host, and an OCI error body
// saying what to send.
func unauthorized(w http.ResponseWriter, req *http.Request) {
	msg := "authentication required: log in with your Perch API token as the password and any user name, " +
		"e.g. crane auth login " + req.Host + " -u x -p TOKEN (perch auth login prints the token)"
	if req.Header.Get("Authorization") != "" {
		msg = "invalid credentials: the password must be a valid Perch API token; " +
			"check the token (perch auth login) and log in again"
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="perch"`)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	writeError(w, http.StatusUnauthorized, "UNAUTHORIZED", msg)
}

// writeError writes an error in the distribution spec's JSON shape.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	type ociError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Errors []ociError `json:"errors"`
	}{[]ociError{{code, msg}}})
}
