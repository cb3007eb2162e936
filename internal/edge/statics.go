package edge

import (
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Statics ([[statics]] in fly.toml): a GET or HEAD under an app's
// url_prefix is answered by the edge from guest_path in the image of the
// app's release, when the file is there, and never reaches a machine; a
// path that is not there goes to the app, as on Fly (a url_prefix of "/"
// in front of a Rails app is common). The files come from StaticFiles,
// which copies them out of the image on this host once per image and
// directory; the request path then reads only the disk.

// StaticFiles gives the edge the files of an image's directory.
type StaticFiles interface {
	// StaticDir returns a directory on this host holding dir of the image
	// ref (repository@sha256:…), copying it out of the image on first use.
	StaticDir(ctx context.Context, ref, dir string) (string, error)
}

// staticSet is what an app's edges serve themselves: the statics of one
// release and the image they come from.
type staticSet struct {
	ref     string
	statics []api.Static // longest url_prefix first
}

// staticPick is the machine whose release the statics follow: one in
// rotation over one that is not, then the newest release, then the
// latest update.
type staticPick struct {
	m    *store.MachineSpec
	ref  string
	up   bool
	rel  int
	when time.Time
}

// offerStatics considers machine m for its app's statics; t.mu is held.
func (t *table) offerStatics(picks map[string]*staticPick, key string, m *store.MachineSpec, up bool) {
	st, ok := t.status[key]
	if len(m.Config.Statics) == 0 || !ok || st.ImageRef == "" {
		return
	}
	rel, _ := strconv.Atoi(strings.TrimPrefix(m.Config.Metadata["perch_release"], "v"))
	p := &staticPick{m: m, ref: st.ImageRef, up: up, rel: rel, when: m.UpdatedAt}
	if cur := picks[m.App]; cur == nil || cmp.Or(cmpBool(p.up, cur.up), cmp.Compare(p.rel, cur.rel), p.when.Compare(cur.when)) > 0 {
		picks[m.App] = p
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

func (p *staticPick) set() *staticSet {
	s := &staticSet{ref: p.ref}
	for _, st := range p.m.Config.Statics {
		if st.Check() != nil {
			continue // the control plane refuses these
		}
		st.URLPrefix = trimSlash(st.URLPrefix)
		s.statics = append(s.statics, st)
	}
	slices.SortStableFunc(s.statics, func(a, b api.Static) int { return len(b.URLPrefix) - len(a.URLPrefix) })
	return s
}

func trimSlash(p string) string {
	if len(p) > 1 {
		return strings.TrimRight(p, "/")
	}
	return p
}

// StaticImages are the images the edge serves statics from now.
func (s *Snapshot) StaticImages() []string {
	var out []string
	for _, ar := range s.names {
		if ar.statics != nil && !slices.Contains(out, ar.statics.ref) {
			out = append(out, ar.statics.ref)
		}
	}
	slices.Sort(out)
	return out
}

// match is the static whose url_prefix p is under, with the rest of p.
func (s *staticSet) match(p string) (api.Static, string, bool) {
	for _, st := range s.statics {
		pre := st.URLPrefix
		if pre == "/" {
			return st, p, true
		}
		if rest, ok := strings.CutPrefix(p, pre); ok && (rest == "" || rest[0] == '/') {
			return st, rest, true
		}
	}
	return api.Static{}, "", false
}

// serveStatic answers r from the app's statics and says whether it did;
// false sends the request on to the app.
func (e *Edge) serveStatic(w http.ResponseWriter, r *http.Request, set *staticSet, rs *reqState) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	st, rest, ok := set.match(r.URL.Path)
	if !ok {
		return false
	}
	// A path that climbs (decoded: "%2e%2e" too) is never the app's
	// business under a static prefix: refused here, not passed on.
	if slices.Contains(strings.Split(rest, "/"), "..") || strings.ContainsAny(rest, "\x00\\") {
		http.Error(w, "400 bad request: the path leaves the static directory", http.StatusBadRequest)
		return true
	}
	if e.cfg.Statics == nil {
		return false
	}
	dir, err := e.cfg.Statics.StaticDir(r.Context(), set.ref, st.GuestPath)
	if err != nil {
		e.log.Warn("statics unavailable; passing the request to the app", "image", set.ref, "guest_path", st.GuestPath, "err", err)
		return false
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return false
	}
	defer root.Close()
	name := strings.TrimPrefix(path.Clean("/"+rest), "/")
	if name == "" {
		name = "."
	}
	f, fi, err := openStatic(root, name)
	if err == nil && fi.IsDir() {
		f.Close()
		name = path.Join(name, cmp.Or(st.IndexDocument, "index.html"))
		f, fi, err = openStatic(root, name)
	}
	if err != nil || fi.IsDir() {
		if f != nil {
			f.Close()
		}
		return false
	}
	defer f.Close()
	rs.static = true // its bytes out are the app's egress (budget.go)
	serveFile(w, r, root, name, f, fi)
	return true
}

func openStatic(root *os.Root, name string) (*os.File, fs.FileInfo, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fi, nil
}

// serveFile sends a static file: http.ServeContent's conditional requests
// (ETag, If-None-Match, If-Modified-Since) and ranges, gzip when the client
// takes it: name.gz when the image has it, else compressed here for text
// types (then without ranges: a Range request gets the plain file).
func serveFile(w http.ResponseWriter, r *http.Request, root *os.Root, name string, f *os.File, fi fs.FileInfo) {
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype != "" {
		w.Header().Set("Content-Type", ctype)
	}
	compressible := isText(ctype)
	gzipOK := acceptsGzip(r)
	if compressible || hasFile(root, name+".gz") {
		w.Header().Add("Vary", "Accept-Encoding")
	}
	if gzipOK {
		if gz, gfi, err := openStatic(root, name+".gz"); err == nil && gfi.Mode().IsRegular() {
			defer gz.Close()
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("ETag", etag(gfi, "-gz"))
			http.ServeContent(w, r, name, fi.ModTime(), gz)
			return
		}
	}
	if gzipOK && compressible && r.Header.Get("Range") == "" && fi.Size() >= 256 {
		w.Header().Set("ETag", etag(fi, "-gzip"))
		gw := &gzipWriter{ResponseWriter: w}
		http.ServeContent(gw, r, name, fi.ModTime(), f)
		gw.close()
		return
	}
	w.Header().Set("ETag", etag(fi, ""))
	http.ServeContent(w, r, name, fi.ModTime(), f)
}

// etag names a file's version: its size and modification time, which
// every host copies from the image, so every edge gives the same one.
func etag(fi fs.FileInfo, suffix string) string {
	return fmt.Sprintf(`"%x-%x%s"`, fi.Size(), fi.ModTime().UnixNano(), suffix)
}

func hasFile(root *os.Root, name string) bool {
	fi, err := root.Stat(name)
	return err == nil && fi.Mode().IsRegular()
}

func isText(ctype string) bool {
	ctype, _, _ = strings.Cut(ctype, ";")
	switch {
	case strings.HasPrefix(ctype, "text/"), strings.HasSuffix(ctype, "+xml"), strings.HasSuffix(ctype, "+json"):
		return true
	}
	switch ctype {
	case "application/javascript", "application/json", "application/xml", "image/svg+xml", "application/wasm":
		return true
	}
	return false
}

// acceptsGzip says whether the client takes gzip (and did not refuse it
// with q=0).
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") && strings.TrimSpace(coding) != "*" {
			continue
		}
		q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
		if q == "q=0" || q == "q=0.0" || q == "q=0.00" || q == "q=0.000" {
			return false
		}
		return true
	}
	return false
}

// gzipWriter compresses a 200 response's body; any other status (304,
// 412, 416) passes as it is.
type gzipWriter struct {
	http.ResponseWriter
	gz      *gzip.Writer
	written bool
}

func (g *gzipWriter) WriteHeader(code int) {
	if g.written {
		return
	}
	g.written = true
	if code == http.StatusOK {
		h := g.Header()
		h.Del("Content-Length")
		h.Set("Content-Encoding", "gzip")
		g.gz = gzip.NewWriter(g.ResponseWriter)
	}
	g.ResponseWriter.WriteHeader(code)
}

func (g *gzipWriter) Write(b []byte) (int, error) {
	if !g.written {
		g.WriteHeader(http.StatusOK)
	}
	if g.gz != nil {
		return g.gz.Write(b)
	}
	return g.ResponseWriter.Write(b)
}

func (g *gzipWriter) close() {
	if g.gz != nil {
		if err := g.gz.Close(); err != nil && !errors.Is(err, http.ErrBodyNotAllowed) {
			return
		}
	}
}
