package registry

import (
	"encoding/json"
	"net/http"
	"strings"
)

// authorized accepts the Perch token as a bearer token (perch's own
// clients) or as a basic-auth password with any user name (what crane,
// skopeo and docker send after `login -u x -p TOKEN`).
func (r *Registry) authorized(req *http.Request) bool {
	h := req.Header.Get("Authorization")
	if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
		tok = strings.TrimSpace(tok)
		return tok != "" && r.auth(tok)
	}
	if _, pw, ok := req.BasicAuth(); ok {
		return pw != "" && r.auth(pw)
	}
	return false
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
