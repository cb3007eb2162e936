package edge

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

// FuzzHeadAgainstNetHTTP compares the fast path's parse of a request head
// (parseHead, which the guard uses too) with net/http's on the same bytes:
// a head both accept must be framed the same (method, target, Host, body
// length or chunked), so that no request the edge forwards can be read
// differently by a net/http machine behind it.
func FuzzHeadAgainstNetHTTP(f *testing.F) {
	for _, tc := range smuggleCases() {
		if len(tc.raw) < 4096 {
			f.Add([]byte(tc.raw))
		}
	}
	f.Add([]byte("GET /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"))
	f.Fuzz(func(t *testing.T, data []byte) {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 || len(data) > 1<<16 || badLineEnd(data[:end+4]) {
			return // not a whole head, or refused before parsing
		}
		var h reqHead
		if !parseHead(data[:end+2], &h) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data[:end+4])))
		if err != nil {
			// net/http refuses more (a Host that is not a host, a
			// method net/http does not know in absolute form): it then
			// answers 400 itself on the path the request is handed to.
			return
		}
		if req.Method != string(h.method) || req.RequestURI != string(h.target) {
			t.Fatalf("request line: net/http %s %s, fast path %s %s", req.Method, req.RequestURI, h.method, h.target)
		}
		if h.hosts == 1 && req.Host != string(h.host) && !strings.Contains(req.RequestURI, "://") {
			t.Fatalf("Host: net/http %q, fast path %q", req.Host, h.host)
		}
		chunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if chunked != h.chunked {
			t.Fatalf("chunked: net/http %v, fast path %v", chunked, h.chunked)
		}
		if !chunked && req.ContentLength != h.length && !(req.ContentLength == -1 && h.length == 0) {
			t.Fatalf("Content-Length: net/http %d, fast path %d", req.ContentLength, h.length)
		}
	})
}
