package edge

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"golang.org/x/net/http/httpguts"
)

// FuzzHostRouting sends requests with any Host header the HTTP server
// lets through and checks where they go against a plain reference: strip
// the port, one trailing dot and case, then look the name up. A known name
// reaches its app's machine; anything else gets the edge's 404.
func FuzzHostRouting(f *testing.F) {
	for _, h := range []string{"shop.perch.local", "SHOP.perch.local:8080", "www.shop.example.", "[::1]:80", "blog.perch.local:", "shop.perch.local:80:80", "", "a..b", "blog.perch.local.."} {
		f.Add(h)
	}
	e, err := newEdge(Config{Region: "ams", HostID: "h-ams"}) // silent: a log line per input is noise
	if err != nil {
		f.Fatal(err)
	}
	w := &world{e: e}
	shop := startMachine(f, "s1", "ams", "127.0.0.2", nil)
	blog := startMachine(f, "b1", "ams", "127.0.0.3", nil)
	w.app("shop", "www.shop.example", "shop.example")
	w.app("blog")
	w.place("shop", shop, 80, api.StateStarted)
	w.place("blog", blog, 80, api.StateStarted)
	w.commit()
	h := w.e.Handler(80)
	known := map[string]string{"shop.perch.local": "s1", "www.shop.example": "s1", "shop.example": "s1", "blog.perch.local": "b1"}

	f.Fuzz(func(t *testing.T, host string) {
		if !httpguts.ValidHostHeader(host) || strings.ContainsAny(host, "\r\n") {
			return // the server answers 400 before any handler
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET / HTTP/1.1\r\nHost: " + host + "\r\n\r\n")))
		if err != nil {
			return
		}
		name := host
		if hn, _, err := net.SplitHostPort(host); err == nil {
			name = hn
		}
		want := known[strings.ToLower(strings.TrimSuffix(name, "."))]

		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Header().Get(hdrRequestID) == "" {
			t.Fatalf("Host %q: answer without %s", host, hdrRequestID)
		}
		if want == "" {
			if rec.Code != http.StatusNotFound {
				t.Fatalf("Host %q names no app, got %d %q", host, rec.Code, rec.Body.String())
			}
			return
		}
		if rec.Code != http.StatusOK || answeredBy(t, rec.Body.String()).Machine != want {
			t.Fatalf("Host %q: got %d %q, want machine %s", host, rec.Code, rec.Body.String(), want)
		}
	})
}
