package edge

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
)

// Headers the edge adds.
const (
	hdrRegion    = "Perch-Region"     // to the machine: the edge's region
	hdrClientIP  = "Perch-Client-IP"  // to the machine: the client's address
	hdrRequestID = "Perch-Request-Id" // to the machine and on every response
	// hdrForwardedPort is the public port the client connected to, to the
	// machine (like Fly-Forwarded-Port).
	hdrForwardedPort = "Perch-Forwarded-Port"
	hdrReplay        = "Perch-Replay"     // from the machine: replay the request elsewhere
	hdrReplaySrc     = "Perch-Replay-Src" // to the machine a replay reaches: where it came from
)

// Fly's names for the same headers, so libraries written for Fly work
// unchanged (fly.io/docs/networking/request-headers). The edge always sets
// them itself: a client cannot choose them.
const (
	hdrFlyClientIP       = "Fly-Client-IP"
	hdrFlyRegion         = "Fly-Region"
	hdrFlyForwardedPort  = "Fly-Forwarded-Port"
	hdrFlyForwardedProto = "Fly-Forwarded-Proto"
	hdrFlyForwardedSSL   = "Fly-Forwarded-Ssl"
	hdrFlyRequestID      = "Fly-Request-Id"
)

// serverName is the Server header of every response through the edge.
const serverName = "perch"

// rewrite makes the request the machine gets. ReverseProxy has already
// removed hop-by-hop and inbound X-Forwarded-* headers from pr.Out.
func (e *Edge) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*reqState)
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = st.host // retryTransport sets each attempt's machine
	// Keep the client's chain and append to it, as a Director-based proxy would.
	if prior := pr.In.Header["X-Forwarded-For"]; len(prior) > 0 {
		out.Header["X-Forwarded-For"] = prior
	}
	pr.SetXForwarded() // X-Forwarded-For, -Host, -Proto
	out.Header.Set("X-Forwarded-Port", st.port)
	out.Header.Set(hdrForwardedPort, st.port)
	out.Header.Del(hdrReplaySrc) // only the edge says a request is a replay
	out.Header.Set(hdrRegion, e.cfg.Region)
	client := clientIP(pr.In.RemoteAddr)
	out.Header.Set(hdrClientIP, client)
	out.Header.Set(hdrRequestID, st.id)
	proto, ssl := "http", "off"
	if pr.In.TLS != nil {
		proto, ssl = "https", "on"
	}
	out.Header.Set(hdrFlyClientIP, client)
	out.Header.Set(hdrFlyRegion, e.cfg.Region)
	out.Header.Set(hdrFlyForwardedPort, st.port)
	out.Header.Set(hdrFlyForwardedProto, proto)
	out.Header.Set(hdrFlyForwardedSSL, ssl)
	out.Header.Set(hdrFlyRequestID, st.id)
	via := viaFor(pr.In)
	if prior := out.Header.Values("Via"); len(prior) > 0 {
		via = strings.Join(prior, ", ") + ", " + via
	}
	out.Header.Set("Via", via)
}

func clientIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return remoteAddr
	}
	return host
}

// viaFor is this hop's Via entry (RFC 9110 section 7.6.3).
func viaFor(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0 perch"
	case r.ProtoMajor >= 2:
		return "2 perch"
	}
	return "1.1 perch"
}

// newRequestID is 16 random hex digits. Not a secret, only unique enough to
// find one request in the logs, so math/rand (per-thread ChaCha8, no lock).
func newRequestID() string {
	const digits = "0123456789abcdef"
	v := rand.Uint64()
	var b [16]byte
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}
