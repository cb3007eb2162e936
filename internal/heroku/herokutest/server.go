// Package herokutest is a stand-in for the Heroku Platform API, for tests:
// the read endpoints Turboku uses (app, releases, slug and its blob,
// config vars, formation) with the request and response shapes Heroku
// documents: the version 3 Accept header required, Bearer tokens (401,
// 403), Range/Next-Range paging (206 Partial Content), RateLimit-Remaining
// on every answer, and 429 with Retry-After on demand. It serves on
// loopback (httptest) and keeps everything in memory.
package herokutest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// App is an app the stand-in serves.
type App struct {
	Name       string
	Region     string // "us" or "eu"
	Stack      string // e.g. "heroku-24"
	Generation string // "cedar" (default) or "fir"
	ConfigVars map[string]string
	Formation  []Formation
	// Forbidden makes every request about the app 403, as for a token of
	// an account that is not a collaborator.
	Forbidden bool
}

// Formation is a process type's quantity and size.
type Formation struct {
	Type     string
	Command  string
	Quantity int
	Size     string // "standard-1X" when empty
}

// Slug is a slug to release: its tar.gz and process types.
type Slug struct {
	Tgz          []byte
	ProcessTypes map[string]string
	Stack        string // the app's stack when empty
	Commit       string
	// Checksum replaces the real "SHA256:..." (to test a mismatch); "-"
	// serves null.
	Checksum string
}

// Server is the stand-in. Create with New; Close when done.
type Server struct {
	*httptest.Server
	Token string // the one token accepted

	mu        sync.Mutex
	apps      map[string]*app
	limited   []int // Retry-After seconds of the next requests answered 429
	remaining int
	requests  []string
}

type app struct {
	App
	id       string
	created  time.Time
	releases []release
	slugs    map[string]*slug
}

type release struct {
	id, description, status string
	version                 int
	slugID, imageID         string
	created                 time.Time
}

type slug struct {
	Slug
	id      string
	created time.Time
}

// New starts a stand-in accepting token.
func New(token string) *Server {
	s := &Server{Token: token, apps: map[string]*app{}, remaining: 4500}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

func uuid() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// AddApp adds (or replaces) an app, with no release yet.
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a.Generation == "" {
		a.Generation = "cedar"
	}
	s.apps[a.Name] = &app{App: a, id: uuid(), created: time.Now().UTC(), slugs: map[string]*slug{}}
}

// Release makes sl the app's new current release (version one more than
// the last) and returns its version. Config vars given replace the app's.
func (s *Server) Release(appName string, sl Slug, description string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.apps[appName]
	if sl.Stack == "" {
		sl.Stack = a.Stack
	}
	id := uuid()
	a.slugs[id] = &slug{Slug: sl, id: id, created: time.Now().UTC()}
	return a.addRelease(release{slugID: id, description: description})
}

// ReleaseOCI adds a Fir release: an OCI image, no slug.
func (s *Server) ReleaseOCI(appName, description string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apps[appName].addRelease(release{imageID: uuid(), description: description})
}

// ReleaseConfig adds a release with no slug, as Heroku makes for a config
// var change before an app's first build.
func (s *Server) ReleaseConfig(appName, description string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apps[appName].addRelease(release{description: description})
}

// FailRelease adds a failed release (one a client must skip).
func (s *Server) FailRelease(appName string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.apps[appName].addRelease(release{status: "failed", description: "Deploy failed"})
}

func (a *app) addRelease(r release) int {
	r.id, r.created = uuid(), time.Now().UTC()
	r.version = len(a.releases) + 1
	if r.status == "" {
		r.status = "succeeded"
	}
	a.releases = append(a.releases, r)
	return r.version
}

// SetConfigVars replaces the app's config vars.
func (s *Server) SetConfigVars(appName string, vars map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apps[appName].ConfigVars = vars
}

// RateLimit makes the next len(retryAfter) requests answer 429 with the
// Retry-After seconds given.
func (s *Server) RateLimit(retryAfter ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limited = append(s.limited, retryAfter...)
}

// SetRemaining sets the requests left in the account's rate limit (4,500
// at start), which RateLimit-Remaining reports after each request.
func (s *Server) SetRemaining(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remaining = n
}

// Requests are the requests served so far, as "METHOD path [Range]".
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

type apiError struct {
	ID      string `json:"id"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, id, msg string) {
	writeJSON(w, status, apiError{ID: id, Message: msg})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+r.Header.Get("Range")))
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	// Blobs stand for S3's pre-signed URLs: no API headers, no token.
	if len(parts) == 2 && parts[0] == "blobs" {
		for _, a := range s.apps {
			if sl, ok := a.slugs[parts[1]]; ok {
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Write(sl.Tgz)
				return
			}
		}
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Accept") != "application/vnd.heroku+json; version=3" {
		fail(w, http.StatusBadRequest, "bad_request", "Please specify a version along with Heroku's API MIME type. For example, `Accept: application/vnd.heroku+json; version=3`.")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.Token {
		fail(w, http.StatusUnauthorized, "unauthorized", "Invalid credentials provided.")
		return
	}
	if len(s.limited) > 0 {
		wait := s.limited[0]
		s.limited = s.limited[1:]
		w.Header().Set("Retry-After", strconv.Itoa(wait))
		w.Header().Set("RateLimit-Remaining", "0")
		fail(w, http.StatusTooManyRequests, "rate_limit", "Your account reached the API rate limit\nPlease wait a few minutes before making new requests")
		return
	}
	if s.remaining > 0 {
		s.remaining--
	}
	w.Header().Set("RateLimit-Remaining", strconv.Itoa(s.remaining))
	if r.Method != http.MethodGet {
		fail(w, http.StatusMethodNotAllowed, "not_allowed", "The stand-in serves only reads.")
		return
	}
	if len(parts) < 2 || parts[0] != "apps" {
		fail(w, http.StatusNotFound, "not_found", "The requested API endpoint was not found.")
		return
	}
	a := s.apps[parts[1]]
	if a == nil {
		fail(w, http.StatusNotFound, "not_found", "Couldn't find that app.")
		return
	}
	if a.Forbidden {
		fail(w, http.StatusForbidden, "forbidden", "You do not have access to the app "+a.Name+".")
		return
	}
	switch {
	case len(parts) == 2:
		writeJSON(w, http.StatusOK, s.appJSON(a))
	case len(parts) == 3 && parts[2] == "releases":
		var items []rangeItem
		for _, rel := range a.releases {
			items = append(items, rangeItem{key: fmt.Sprintf("%010d", rel.version), keyOut: strconv.Itoa(rel.version), v: s.releaseJSON(a, rel)})
		}
		s.page(w, r, "version", items)
	case len(parts) == 4 && parts[2] == "slugs":
		sl := a.slugs[parts[3]]
		if sl == nil {
			fail(w, http.StatusNotFound, "not_found", "Couldn't find that slug.")
			return
		}
		writeJSON(w, http.StatusOK, s.slugJSON(sl))
	case len(parts) == 3 && parts[2] == "config-vars":
		vars := a.ConfigVars
		if vars == nil {
			vars = map[string]string{}
		}
		writeJSON(w, http.StatusOK, vars)
	case len(parts) == 3 && parts[2] == "formation":
		var items []rangeItem
		for _, f := range a.Formation {
			items = append(items, rangeItem{key: f.Type, keyOut: f.Type, v: s.formationJSON(a, f)})
		}
		s.page(w, r, "type", items)
	default:
		fail(w, http.StatusNotFound, "not_found", "The requested API endpoint was not found.")
	}
}

type rangeItem struct {
	key, keyOut string // sort key, and the value Next-Range names
	v           any
}

// page answers a list request with Heroku's Range semantics: "FIELD
// [START]..[END][; order=asc|desc][, max=N]", START prefixed with "]" to
// exclude it (what Next-Range sends). 206 and Next-Range while more remain.
func (s *Server) page(w http.ResponseWriter, r *http.Request, field string, items []rangeItem) {
	order, max, start, exclusive := "asc", 200, "", false
	if rng := r.Header.Get("Range"); rng != "" {
		f, rest, _ := strings.Cut(rng, " ")
		if f != field {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("Invalid Range header: sort by %q, not %q.", field, f))
			return
		}
		bounds, opts, _ := strings.Cut(rest, ";")
		start, _, _ = strings.Cut(strings.TrimSpace(bounds), "..")
		if strings.HasPrefix(start, "]") {
			start, exclusive = start[1:], true
		}
		for _, o := range strings.Split(opts, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(o), "=")
			switch k {
			case "order":
				order = v
			case "max":
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 || n > 1000 {
					fail(w, http.StatusBadRequest, "bad_request", "Invalid Range header: max must be 1-1000.")
					return
				}
				max = n
			}
		}
	}
	slices.SortFunc(items, func(a, b rangeItem) int { return strings.Compare(a.key, b.key) })
	if order == "desc" {
		slices.Reverse(items)
	}
	if start != "" {
		i := slices.IndexFunc(items, func(it rangeItem) bool { return it.keyOut == start })
		if i < 0 {
			items = nil
		} else if exclusive {
			items = items[i+1:]
		} else {
			items = items[i:]
		}
	}
	status := http.StatusOK
	if len(items) > max {
		items = items[:max]
		status = http.StatusPartialContent
		w.Header().Set("Next-Range", fmt.Sprintf("%s ]%s..; order=%s, max=%d", field, items[len(items)-1].keyOut, order, max))
	}
	out := make([]any, 0, len(items))
	for _, it := range items {
		out = append(out, it.v)
	}
	if len(items) > 0 {
		w.Header().Set("Content-Range", fmt.Sprintf("%s %s..%s", field, items[0].keyOut, items[len(items)-1].keyOut))
	}
	writeJSON(w, status, out)
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func named(name string) map[string]any {
	return map[string]any{"id": uuid(), "name": name}
}

func (s *Server) appJSON(a *app) map[string]any {
	region := map[string]any{"id": uuid(), "name": a.Region}
	var released any
	if n := len(a.releases); n > 0 {
		released = stamp(a.releases[n-1].created)
	}
	return map[string]any{
		"acm":                            false,
		"archived_at":                    nil,
		"buildpack_provided_description": nil,
		"build_stack":                    named(a.Stack),
		"created_at":                     stamp(a.created),
		"generation":                     named(a.Generation),
		"git_url":                        "https://git.heroku.com/" + a.Name + ".git",
		"id":                             a.id,
		"internal_routing":               nil,
		"maintenance":                    false,
		"name":                           a.Name,
		"owner":                          map[string]any{"email": "owner@example.com", "id": uuid()},
		"organization":                   nil,
		"team":                           nil,
		"region":                         region,
		"released_at":                    released,
		"repo_size":                      nil,
		"slug_size":                      nil,
		"space":                          nil,
		"stack":                          named(a.Stack),
		"updated_at":                     stamp(a.created),
		"web_url":                        "https://" + a.Name + ".herokuapp.com/",
	}
}

func (s *Server) releaseJSON(a *app, r release) map[string]any {
	var slugRef, image any
	if r.slugID != "" {
		slugRef = map[string]any{"id": r.slugID}
	}
	if r.imageID != "" {
		image = map[string]any{"id": r.imageID}
	}
	last := a.releases[len(a.releases)-1].version
	return map[string]any{
		"addon_plan_names":      []string{},
		"app":                   map[string]any{"id": a.id, "name": a.Name},
		"created_at":            stamp(r.created),
		"description":           r.description,
		"id":                    r.id,
		"updated_at":            stamp(r.created),
		"slug":                  slugRef,
		"oci_image":             image,
		"status":                r.status,
		"user":                  map[string]any{"email": "owner@example.com", "id": uuid()},
		"version":               r.version,
		"current":               r.version == last,
		"output_stream_url":     nil,
		"eligible_for_rollback": true,
	}
}

func (s *Server) slugJSON(sl *slug) map[string]any {
	sum := sha256.Sum256(sl.Tgz)
	var checksum any = "SHA256:" + hex.EncodeToString(sum[:])
	switch sl.Checksum {
	case "":
	case "-":
		checksum = nil
	default:
		checksum = sl.Checksum
	}
	var commit any
	if sl.Commit != "" {
		commit = sl.Commit
	}
	types := sl.ProcessTypes
	if types == nil {
		types = map[string]string{}
	}
	return map[string]any{
		"blob":                           map[string]any{"method": "get", "url": s.URL + "/blobs/" + sl.id},
		"buildpack_provided_description": "Python",
		"checksum":                       checksum,
		"commit":                         commit,
		"commit_description":             nil,
		"created_at":                     stamp(sl.created),
		"id":                             sl.id,
		"process_types":                  types,
		"size":                           len(sl.Tgz),
		"stack":                          named(sl.Stack),
		"updated_at":                     stamp(sl.created),
	}
}

func (s *Server) formationJSON(a *app, f Formation) map[string]any {
	size := f.Size
	if size == "" {
		size = "standard-1X"
	}
	return map[string]any{
		"app":        map[string]any{"id": a.id, "name": a.Name},
		"command":    f.Command,
		"created_at": stamp(a.created),
		"id":         uuid(),
		"quantity":   f.Quantity,
		"size":       size,
		"type":       f.Type,
		"updated_at": stamp(a.created),
	}
}
