package ui

import (
	"context"
	"io"
	"net/http"
	"sync"
)

// handlerTransport serves an api.Client's requests with the server's own
// API handler, in process: the dashboard's reads and actions take the same
// route, token check and scope as a CLI's. Bodies stream (a log follow
// works), and the response is returned once the handler wrote its header.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil {
		req.Body = http.NoBody
	}
	req.RemoteAddr = "127.0.0.1:0"
	req.RequestURI = req.URL.RequestURI()
	pr, pw := io.Pipe()
	rw := &pipeWriter{header: http.Header{}, body: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			rw.WriteHeader(http.StatusOK) // a handler that wrote nothing
			pw.Close()
		}()
		t.h.ServeHTTP(rw, req)
	}()
	// As over a network, a cancelled request ends the body's reads at once
	// (a log follow waiting for its next line).
	stop := context.AfterFunc(req.Context(), func() { pr.CloseWithError(req.Context().Err()) })
	select {
	case <-rw.ready:
	case <-req.Context().Done():
		stop()
		pr.Close()
		return nil, req.Context().Err()
	}
	return &http.Response{StatusCode: rw.code, Status: http.StatusText(rw.code), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rw.sent, Body: pr, Request: req, ContentLength: -1}, nil
}

type pipeWriter struct {
	header http.Header
	sent   http.Header
	body   *io.PipeWriter
	once   sync.Once
	code   int
	ready  chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(code int) {
	w.once.Do(func() {
		w.code = code
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Flush is a no-op: every Write already reaches the reader.
func (w *pipeWriter) Flush() {}
