package ui_test

import (
	"net/http"
	"strings"
	"testing"
)

// TestLandOutline: the map's outline is served from the binary, as an SVG
// image the browser can cache.
func TestLandOutline(t *testing.T) {
	w := startWorld(t)
	c := browser(t)
	p := get(t, c, w.srv.URL()+"/ui/static/land.svg")
	if p.status != http.StatusOK || !strings.HasPrefix(p.body, "<svg") || len(p.body) < 20000 {
		t.Fatalf("land.svg: %d, %d bytes: %.200s", p.status, len(p.body), p.body)
	}
	for _, f := range []string{"htmx.min.js", "htmx-ext-sse.js", "style.css"} {
		if p := get(t, c, w.srv.URL()+"/ui/static/"+f); p.status != http.StatusOK {
			t.Errorf("%s: %d", f, p.status)
		}
	}
	if p := get(t, c, w.srv.URL()+"/ui/static/pages.html"); p.status != http.StatusNotFound {
		t.Errorf("templates are served as files: %d", p.status)
	}
}
