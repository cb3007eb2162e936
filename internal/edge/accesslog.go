package edge

import (
	"log/slog"
	"net/http"
	"time"
)

// logWriter records what the client got, for the access log.
type logWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *logWriter) WriteHeader(code int) {
	// 1xx other than 101 are informational; the final status comes later.
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *logWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *logWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// accessLog writes one line per request.
func (e *Edge) accessLog(w *logWriter, r *http.Request, st *reqState, start time.Time) {
	var machine, region string
	if st.backend != nil {
		machine, region = st.backend.Target.MachineID, st.backend.Target.Region
	}
	status := w.status
	if status == 0 {
		status = http.StatusOK // a handler that wrote nothing
	}
	e.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
		slog.String("request_id", st.id),
		slog.String("method", r.Method),
		slog.String("host", r.Host),
		slog.String("path", r.URL.Path),
		slog.String("client", clientIP(r.RemoteAddr)),
		slog.String("port", st.port),
		slog.String("app", st.app),
		slog.String("machine", machine),
		slog.String("machine_region", region),
		slog.Int("attempts", st.attempts),
		slog.Int("status", status),
		slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		slog.Int64("bytes", w.bytes),
	)
}
