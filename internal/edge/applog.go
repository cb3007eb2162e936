package edge

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// The edge writes a line in an app's own log (store.LogStream, what `perch
// logs` shows) when it closes a raw TCP connection of the app that it
// could not take anywhere: the client saw only a closed connection, and
// the app's owner would otherwise have to read the edge's access log to
// learn why. The lines come from machine "edge" of the edge's region,
// stream "edge". A connection flood must not become a log flood: each app
// gets at most one line per appLogInterval, and the lines held back are
// counted in a line of their own once the interval is over.

// EdgeLogMachine is the machine id of the lines the edge writes in an
// app's log (`perch logs --machine edge`); their stream is "edge".
const EdgeLogMachine = "edge"

// appLogInterval is the least time between two edge lines in one app's log.
const appLogInterval = time.Second

// appLogger writes the edge's lines into apps' logs, rate-limited per app.
type appLogger struct {
	region   string
	interval time.Duration
	publish  func(api.LogLine) // nil: no log stream (an edge without a store)

	mu     sync.Mutex // guards apps and closed
	apps   map[string]*appLogState
	closed bool
}

// appLogState is what the limiter remembers of one app.
type appLogState struct {
	last       time.Time   // when the last line went out
	suppressed int         // lines held back since
	lastMsg    string      // the latest of them
	timer      *time.Timer // reports the held-back lines; nil if none is set
}

func newAppLogger(region string, st *store.Store, log *slog.Logger) *appLogger {
	l := &appLogger{region: region, interval: appLogInterval, apps: map[string]*appLogState{}}
	if st != nil {
		l.publish = func(line api.LogLine) {
			b, err := json.Marshal(line)
			if err != nil {
				return
			}
			if err := st.Conn().Publish(store.LogSubject(line.App, line.Region, line.MachineID), b); err != nil {
				log.Debug("publish a line to an app's log", "app", line.App, "err", err)
			}
		}
	}
	return l
}

// log writes msg in app's log now, or counts it for the next report when
// the app had a line less than an interval ago.
func (l *appLogger) log(app, msg string) {
	if l.publish == nil || app == "" {
		return
	}
	now := time.Now()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	s := l.apps[app]
	if s == nil {
		l.prune(now)
		s = &appLogState{}
		l.apps[app] = s
	}
	if s.timer == nil && now.Sub(s.last) >= l.interval {
		s.last = now
		l.mu.Unlock()
		l.send(app, msg, now)
		return
	}
	s.suppressed++
	s.lastMsg = msg
	if s.timer == nil {
		s.timer = time.AfterFunc(s.last.Add(l.interval).Sub(now), func() { l.report(app) })
	}
	l.mu.Unlock()
}

// report writes the line that counts what app's limiter held back.
func (l *appLogger) report(app string) {
	l.mu.Lock()
	s := l.apps[app]
	if s == nil || l.closed || s.suppressed == 0 {
		if s != nil {
			s.timer = nil
		}
		l.mu.Unlock()
		return
	}
	now := time.Now()
	msg := heldBack(s.suppressed, now.Sub(s.last), s.lastMsg)
	s.last, s.suppressed, s.lastMsg, s.timer = now, 0, "", nil
	l.mu.Unlock()
	l.send(app, msg, now)
}

func heldBack(n int, over time.Duration, last string) string {
	what := "connection"
	if n > 1 {
		what = "connections"
	}
	return fmt.Sprintf("%d more raw TCP %s closed in the last %s (the edge writes at most one line a second per app); the last: %s",
		n, what, over.Round(100*time.Millisecond), last)
}

// prune forgets apps with nothing held back and no line for a while, so
// the map does not grow with every app ever refused; l.mu is held.
func (l *appLogger) prune(now time.Time) {
	if len(l.apps) < 256 {
		return
	}
	for app, s := range l.apps {
		if s.timer == nil && now.Sub(s.last) >= l.interval {
			delete(l.apps, app)
		}
	}
}

// close reports what is held back and writes nothing more.
func (l *appLogger) close() {
	l.mu.Lock()
	var reports []api.LogLine
	now := time.Now().UTC()
	for app, s := range l.apps {
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
		if s.suppressed > 0 {
			reports = append(reports, l.line(app, heldBack(s.suppressed, now.Sub(s.last), s.lastMsg), now))
		}
	}
	l.closed = true
	l.mu.Unlock()
	for _, r := range reports {
		l.publish(r)
	}
}

func (l *appLogger) line(app, msg string, at time.Time) api.LogLine {
	return api.LogLine{Timestamp: at.UTC(), App: app, Region: l.region, MachineID: EdgeLogMachine, Stream: "edge", Message: msg}
}

func (l *appLogger) send(app, msg string, at time.Time) { l.publish(l.line(app, msg, at)) }
