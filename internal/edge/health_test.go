package edge

import (
	"net/http"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// A machine whose host reports a critical health check leaves rotation: the
// edge in ams sends its requests to iad until the check passes again. A
// check in its grace period (warning) keeps the machine in.
func TestCriticalCheckIsOutOfRotation(t *testing.T) {
	w := newWorld(t, "ams")
	w.app("shop")
	ams := startMachine(t, "m-ams", "ams", "127.0.0.2", nil)
	iad := startMachine(t, "m-iad", "iad", "127.0.0.3", nil)
	w.place("shop", ams, 80, api.StateStarted)
	w.place("shop", iad, 80, api.StateStarted)
	checks := func(m *machine, statuses ...string) {
		st := store.MachineStatus{ID: m.id, App: "shop", HostID: "h-" + m.region, State: api.StateStarted, Ready: true}
		for i, s := range statuses {
			st.Checks = append(st.Checks, api.CheckStatus{Name: "check-" + string(rune('a'+i)), Status: s})
		}
		w.e.table.setStatus(store.MachineKey("shop", m.id), st)
		w.commit()
	}
	srv := w.serve(80)
	expect := func(what, want string) {
		t.Helper()
		for range 3 {
			res, body := get(t, srv, "shop.perch.local", nil)
			if res.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d %q, want an answer from %s", what, res.StatusCode, body, want)
			}
			if got := answeredBy(t, body).Machine; got != want {
				t.Fatalf("%s: answered by %s, want %s", what, got, want)
			}
		}
	}

	checks(ams, api.CheckWarning)
	expect("ams check in its grace period", "m-ams")
	checks(ams, api.CheckPassing, api.CheckCritical)
	expect("one of two ams checks critical", "m-iad")
	checks(ams, api.CheckPassing, api.CheckPassing)
	expect("ams checks passing again", "m-ams")

	// With every machine critical, none is chosen: the app has no
	// machine to answer.
	checks(ams, api.CheckCritical)
	checks(iad, api.CheckCritical)
	if res, body := get(t, srv, "shop.perch.local", nil); res.StatusCode != http.StatusBadGateway || !strings.Contains(body, "2 started machine(s) fail their health checks") {
		t.Errorf("all machines critical: got %d %q, want 502 saying the health checks fail", res.StatusCode, body)
	}
	checks(iad)
	expect("iad without checks", "m-iad")
}
