package edge

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
)

// The edge's own answers: short text a person reading curl output
// understands, saying what was wrong and what to do.

func (e *Edge) noApp(w http.ResponseWriter, host string) {
	how := fmt.Sprintf("An app answers at <app name>.%s or at one of its custom hostnames.", e.cfg.Domain)
	var msg string
	switch name, ok := strings.CutSuffix(host, "."+e.cfg.Domain); {
	case host == "":
		msg = "perch: the request has no Host header. " + how
	case ok:
		msg = fmt.Sprintf("perch: no app is named %q (host %q). %s", name, host, how)
	default:
		msg = fmt.Sprintf("perch: no app answers to host %q. %s", host, how)
	}
	http.Error(w, msg, http.StatusNotFound)
}

func noService(w http.ResponseWriter, app string, port int) {
	http.Error(w, fmt.Sprintf("perch: app %q has no HTTP service on port %d.", app, port), http.StatusNotFound)
}

func noMachine(w http.ResponseWriter, app string, unhealthy int) {
	if unhealthy > 0 {
		http.Error(w, fmt.Sprintf("perch: app %q has no healthy machine: %d started machine(s) fail their health checks. Run \"perch status\" to see the checks.", app, unhealthy),
			http.StatusBadGateway)
		return
	}
	http.Error(w, fmt.Sprintf("perch: app %q has no started machine; its machines may be stopped, stopping or failing. Run \"perch status\" to see them.", app),
		http.StatusBadGateway)
}

func unreachable(w http.ResponseWriter, st *reqState) {
	http.Error(w, fmt.Sprintf("perch: app %q has started machines but none could be reached (tried %d). The edge's log has details under request id %s.",
		st.app, st.attempts, st.id), http.StatusBadGateway)
}

// answerError answers the errors of choosing and replaying that are not
// "could not reach a machine"; it says whether it did.
func (e *Edge) answerError(w http.ResponseWriter, st *reqState, err error) bool {
	var re *replayError
	var we *wakeError
	switch {
	case errors.As(err, &we):
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("perch: app %q had no started machine and none could be started in time: %v. Try again; \"perch status\" shows its machines.", st.app, we.err),
			http.StatusServiceUnavailable)
	case errors.Is(err, errBusy):
		e.metrics.rejected.WithLabelValues("busy").Inc()
		w.Header().Set("Retry-After", e.retryAfter())
		http.Error(w, fmt.Sprintf("perch: every machine of app %q is at its concurrency hard limit and none freed up in %s; try again shortly. Raise hard_limit in [services.concurrency] or add machines if this persists.",
			st.app, e.limits.QueueTimeout), http.StatusServiceUnavailable)
	case errors.As(err, &re):
		http.Error(w, re.msg, re.status)
	case errors.Is(err, errNoCandidate):
		noMachine(w, st.app, 0)
	default:
		return false
	}
	return true
}

// retryAfter is the Retry-After of a 503 for busy machines: the queue
// wait, in whole seconds, at least 1.
func (e *Edge) retryAfter() string {
	return strconv.Itoa(max(1, int(math.Ceil(e.limits.QueueTimeout.Seconds()))))
}

// misdirected answers a request for an app on another app's own address
// (421): each dedicated address serves its app alone.
func misdirected(w http.ResponseWriter, host, owner string) {
	http.Error(w, fmt.Sprintf("perch: this address is app %q's own; %s is not served here. Use %s's addresses (perch ips list) or the shared one.", owner, host, host), http.StatusMisdirectedRequest)
}
