package edge

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// logWriter records what the client got, for the access log, and bounds
// each write to the client by SendTimeout (sendDeadline).
type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	send   time.Duration // Limits.SendTimeout; 0 is none
	wdl    time.Time     // the write deadline set, zero if none
}

func (w *logWriter) WriteHeader(code int) {
	// 1xx other than 101 are informational; the final status comes later.
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	if code != http.StatusSwitchingProtocols { // an upgraded connection has no deadline
		w.sendDeadline()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.sendDeadline()
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// sendDeadline gives the next write SendTimeout to finish, moving the
// deadline at most every 64th of it, as the fast path does.
func (w *logWriter) sendDeadline() {
	if w.send <= 0 {
		return
	}
	t := time.Now().Add(w.send)
	if d := t.Sub(w.wdl); d >= 0 && d < w.send/64 {
		return
	}
	w.wdl = t
	_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(t)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish ends a request: gives back its slot and its place in the app's
// count, records its metrics and writes its access log line.
func (e *Edge) finish(w *logWriter, r *http.Request, st *reqState, start time.Time) {
	if !w.wdl.IsZero() {
		// A deadline set for this answer must not cut the connection's
		// next one (net/http keeps the connection's deadlines).
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Time{})
	}
	e.finishRequest(r.Context(), st, start, r.Method, r.Host, r.URL.Path, r.Proto, r.RemoteAddr, w.status, w.bytes)
}

// finishRequest is finish for both HTTP/1 paths: what the request was and
// what the client got (status, body bytes).
func (e *Edge) finishRequest(ctx context.Context, st *reqState, start time.Time, method, host, path, proto, remoteAddr string, status int, written int64) {
	st.releaseSlot()
	if st.in != nil {
		st.in.done() // the upload ended with the request
	}
	if st.buffered != nil {
		st.buffered()
	}
	if st.appLoad != nil {
		st.appLoad.active.Add(-1)
	}
	d := time.Since(start)
	if status == 0 {
		status = http.StatusOK // a handler that wrote nothing
	}
	app, machine, region := st.app, "", ""
	if b := st.backend; b != nil {
		app, machine, region = b.Target.App, b.Target.MachineID, b.Target.Region
	}
	st.demand.end(region)
	in := st.body.bytesRead() + st.fastIn
	if b := st.backend; b != nil && b.load != nil && b.load.app == app && b.load.machine == machine && b.load.region == region {
		e.metrics.observeMachine(b.load, status, in, written, d)
	} else {
		e.metrics.observe(app, region, machine, status, in, written, d)
	}
	if st.backend != nil || st.static {
		e.egress.add(app, written) // budget.go
	}

	if !e.accessLog.Enabled(ctx, slog.LevelInfo) {
		return // no log: nothing to build
	}
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.String("request_id", st.id),
		slog.String("method", method),
		slog.String("host", host),
		slog.String("path", path),
		slog.String("proto", proto),
		slog.String("client", clientIP(remoteAddr)),
		slog.String("port", st.port),
		slog.String("app", st.app),
		slog.String("machine", machine),
		slog.String("machine_region", region),
		slog.Int("attempts", st.attempts),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
		slog.Int64("bytes_in", in),
		slog.Int64("bytes", written),
	)
	if st.queued > 0 {
		attrs = append(attrs, slog.Float64("queued_ms", float64(st.queued.Microseconds())/1000))
	}
	if st.replay != "" {
		attrs = append(attrs, slog.String("replay", st.replay))
	}
	e.accessLog.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
}
