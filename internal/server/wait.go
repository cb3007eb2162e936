package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// awaitState watches the machine's status until its host reports one of
// want for the spec's current generation, the machine fails, or timeout
// passes.
func (s *Server) awaitState(ctx context.Context, sp store.MachineSpec, want []string, timeout time.Duration) (store.MachineStatus, error) {
	wants := func(state string) bool { return slices.Contains(want, state) }
	wantText := strings.Join(want, " or ")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w, err := s.st.Status.Watch(ctx, sp.Key())
	if err != nil {
		return store.MachineStatus{}, fmt.Errorf("watch machine %s: %w", sp.ID, err)
	}
	defer w.Stop()
	var last store.MachineStatus
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				state := last.State
				if state == "" {
					state = api.StateCreated
				}
				return last, errf(http.StatusRequestTimeout, "machine %s did not reach state %s within %s (it is %s)", sp.ID, wantText, timeout, state)
			}
			return last, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				continue // end of the initial values
			}
			if e.Operation() != jetstream.KeyValuePut {
				if wants(api.StateDestroyed) {
					return store.MachineStatus{State: api.StateDestroyed}, nil
				}
				continue
			}
			var st store.MachineStatus
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				return last, fmt.Errorf("decode status of %s: %w", sp.ID, err)
			}
			last = st
			if st.Generation < sp.Generation {
				continue
			}
			if wants(st.State) {
				return st, nil
			}
			if st.State == api.StateFailed {
				return st, errf(http.StatusConflict, "%s", failureMessage(sp.ID, st))
			}
			if st.State == api.StateDestroyed {
				return st, errf(http.StatusConflict, "machine %s was destroyed", sp.ID)
			}
		}
	}
}

func failureMessage(id string, st store.MachineStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "machine %s failed", id)
	if st.ExitCode != nil {
		fmt.Fprintf(&b, ": exit code %d", *st.ExitCode)
	}
	if n := len(st.Events); n > 0 && st.Events[n-1].Message != "" {
		fmt.Fprintf(&b, ": %s", st.Events[n-1].Message)
	}
	if len(st.LastLogs) > 0 {
		fmt.Fprintf(&b, "; last log lines:\n  %s", strings.Join(st.LastLogs, "\n  "))
	}
	return b.String()
}
