package edge

import (
	"net/http"
	"strings"
)

// redirect answers a plain HTTP request on a port whose chain wants TLS:
// force_https gets a 301 to the same URL over https, as Fly does; a "tls"
// app reached without TLS (on a port another app serves in the clear) gets
// a 400 saying to use https. It says whether it answered.
func (e *Edge) redirect(w http.ResponseWriter, r *http.Request, pr *portRoute) bool {
	if r.TLS != nil {
		return false
	}
	switch {
	case pr.chain.forceHTTPS:
		u := *r.URL
		u.Scheme, u.Host = "https", hostOnly(r.Host)
		http.Redirect(w, r, u.String(), http.StatusMovedPermanently)
		return true
	case pr.chain.tls:
		http.Error(w, "perch: this port serves the app over TLS; use https://", http.StatusBadRequest)
		return true
	}
	return false
}

// hostOnly is a Host header without its port: the https URL goes to the
// default port 443.
func hostOnly(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host[i:], ']') < 0 {
		return host[:i]
	}
	return host
}

// backendTransport picks the transport of each request: h2c (HTTP/2 with
// prior knowledge) for ports with http_options.h2_backend, the gRPC path;
// HTTP/1.1 otherwise, and for upgrades (WebSocket), which HTTP/2 cannot
// carry.
func (e *Edge) backendTransport(h1 *http.Transport) http.RoundTripper {
	h2 := h1.Clone()
	h2.Protocols = new(http.Protocols)
	h2.Protocols.SetUnencryptedHTTP2(true)
	return &protoTransport{h1: h1, h2c: h2}
}

type protoTransport struct {
	h1, h2c http.RoundTripper
}

func (t *protoTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if st, ok := req.Context().Value(stateKey{}).(*reqState); ok && st.h2c && req.Header.Get("Upgrade") == "" {
		return t.h2c.RoundTrip(req)
	}
	return t.h1.RoundTrip(req)
}
