package server

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Endpoints of Fly's Machines API that Fly's clients use beside the core
// ones: leases, metadata, restart, events.

// leaseNonceHeader carries a lease's nonce on changes to a leased machine.
const leaseNonceHeader = "fly-machine-lease-nonce"

const (
	defaultLeaseTTL = 30   // seconds, when POST .../lease gives no ttl
	maxLeaseTTL     = 3600 // seconds
)

func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return strings.ToUpper(hex.EncodeToString(b))
}

func newLease(owner string, ttl int, now time.Time) *store.MachineLease {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &store.MachineLease{Nonce: hex.EncodeToString(b), Owner: cmp.Or(owner, "unknown"),
		ExpiresAt: now.Add(time.Duration(ttl) * time.Second), Version: newInstanceID()}
}

// leaseAllows refuses a change to a machine leased by someone else: one
// whose live lease's nonce the request does not carry (412, as Fly).
func leaseAllows(m *store.MachineSpec, nonce string) error {
	l := m.Lease
	if !l.Live(time.Now()) || nonce == l.Nonce {
		return nil
	}
	if nonce == "" {
		return &httpError{code: http.StatusPreconditionFailed, status: "failed_precondition",
			msg: fmt.Sprintf("machine %s is leased by %s until %s; send the lease's nonce in the %s header, or wait for the lease to end", m.ID, l.Owner, l.ExpiresAt.UTC().Format(time.RFC3339), leaseNonceHeader)}
	}
	return &httpError{code: http.StatusPreconditionFailed, status: "failed_precondition",
		msg: fmt.Sprintf("machine %s is leased by %s until %s, and the %s header does not carry that lease's nonce", m.ID, l.Owner, l.ExpiresAt.UTC().Format(time.RFC3339), leaseNonceHeader)}
}

// leaseBody is Fly's MachineLease.
type leaseBody struct {
	Status string    `json:"status"`
	Data   leaseData `json:"data"`
}

type leaseData struct {
	Nonce     string `json:"nonce"`
	ExpiresAt int64  `json:"expires_at"` // Unix seconds
	Owner     string `json:"owner"`
	Version   string `json:"version"`
}

func leaseView(l *store.MachineLease) leaseBody {
	return leaseBody{Status: "success", Data: leaseData{Nonce: l.Nonce, ExpiresAt: l.ExpiresAt.Unix(), Owner: l.Owner, Version: l.Version}}
}

// acquireLease takes a lease on the machine (POST .../lease?ttl=N), or
// with the current lease's nonce in the header extends it. A live lease
// of someone else is a 409: Fly's clients retry on it.
func (s *Server) acquireLease(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ttl := defaultLeaseTTL
	if t := r.URL.Query().Get("ttl"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 1 || n > maxLeaseTTL {
			s.fail(w, r, errf(http.StatusBadRequest, "ttl must be 1-%d seconds, got %q", maxLeaseTTL, t))
			return
		}
		ttl = n
	}
	nonce := r.Header.Get(leaseNonceHeader)
	owner := tokenName(r)
	updated, err := store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		now := time.Now()
		switch {
		case m.Lease.Live(now) && nonce == m.Lease.Nonce:
			m.Lease.ExpiresAt = now.Add(time.Duration(ttl) * time.Second)
		case m.Lease.Live(now):
			return errf(http.StatusConflict, "machine %s is already leased by %s until %s; try again after it ends or is released", m.ID, m.Lease.Owner, m.Lease.ExpiresAt.UTC().Format(time.RFC3339))
		case nonce != "":
			return errf(http.StatusBadRequest, "machine %s has no lease with nonce %s (it ended or was released); take a new one without the %s header", m.ID, nonce, leaseNonceHeader)
		default:
			m.Lease = newLease(owner, ttl, now)
		}
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, leaseView(updated.Lease))
}

func (s *Server) getLease(w http.ResponseWriter, r *http.Request) {
	sp, err := s.spec(r.Context(), r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !sp.Lease.Live(time.Now()) {
		s.fail(w, r, errf(http.StatusNotFound, "machine %s has no lease", sp.ID))
		return
	}
	writeJSON(w, http.StatusOK, leaseView(sp.Lease))
}

// releaseLease ends the lease whose nonce the header carries.
func (s *Server) releaseLease(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if !m.Lease.Live(time.Now()) {
			return errf(http.StatusNotFound, "machine %s has no lease to release", m.ID)
		}
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		if nonce == "" {
			return errf(http.StatusBadRequest, "send the lease's nonce in the %s header to release it", leaseNonceHeader)
		}
		m.Lease = nil
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

var metadataKeyRE = regexp.MustCompile(`^[a-zA-Z0-9_.-]{1,64}$`)

func (s *Server) getMetadata(w http.ResponseWriter, r *http.Request) {
	sp, err := s.spec(r.Context(), r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	md := sp.Config.Metadata
	if md == nil {
		md = map[string]string{}
	}
	writeJSON(w, http.StatusOK, md)
}

// setMetadata and deleteMetadata change config.metadata without a new
// config generation: the machine's process is not touched, as on Fly.
func (s *Server) setMetadata(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Value string `json:"value"`
	}
	if err := decodeStrict(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	s.changeMetadata(w, r, func(md map[string]string, key string) { md[key] = body.Value })
}

func (s *Server) deleteMetadata(w http.ResponseWriter, r *http.Request) {
	s.changeMetadata(w, r, func(md map[string]string, key string) { delete(md, key) })
}

func (s *Server) changeMetadata(w http.ResponseWriter, r *http.Request, change func(map[string]string, string)) {
	ctx := r.Context()
	key := r.PathValue("key")
	if !metadataKeyRE.MatchString(key) {
		s.fail(w, r, errf(http.StatusBadRequest, "metadata key %q is not valid: use 1-64 letters, digits, '_', '.' and '-'", key))
		return
	}
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		md := maps.Clone(m.Config.Metadata)
		if md == nil {
			md = map[string]string{}
		}
		change(md, key)
		m.Config.Metadata = md
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listEvents answers the machine's events, the latest first.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request) {
	sp, err := s.spec(r.Context(), r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, err := s.view(r.Context(), sp)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if m.Events == nil {
		m.Events = []api.Event{}
	}
	writeJSON(w, http.StatusOK, m.Events)
}

// restartMachine stops the machine's process (drained, with ?signal= and
// ?timeout= or its stop_config; ?force_stop=true kills it) and starts it
// afresh from its image, as a new instance: what Fly's restart does.
func (s *Server) restartMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	sig := q.Get("signal")
	if q.Get("force_stop") == "true" {
		sig = "SIGKILL"
	}
	if sig != "" && !validSignal(sig) {
		s.fail(w, r, errf(http.StatusBadRequest, "signal %q is not known; use e.g. SIGTERM, SIGINT, SIGKILL", sig))
		return
	}
	var timeout time.Duration
	if t := q.Get("timeout"); t != "" {
		d, err := parseTimeout(t)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		timeout = d
	}
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if m.Desired == store.DesireDestroyed {
			return errf(http.StatusConflict, "machine %s is being destroyed", m.ID)
		}
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		if m.Desired != store.DesireStarted {
			return errf(http.StatusConflict, "machine %s is %s, not started; start it instead (POST .../start)", m.ID, m.Desired)
		}
		m.Generation++
		m.ConfigGeneration = m.Generation
		m.InstanceID = newInstanceID()
		m.StopSignal, m.StopTimeout = sig, timeout
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// parseTimeout reads a timeout as a Go duration ("10s") or, as Fly's
// clients may send it, a number of seconds.
func parseTimeout(t string) (time.Duration, error) {
	if n, err := strconv.Atoi(t); err == nil && n >= 0 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, errf(http.StatusBadRequest, "timeout %q is not a duration; write e.g. \"10s\"", t)
	}
	return d, nil
}

// signalName reads a signal as a name ("SIGHUP", "hup") or a number (9),
// as Fly's clients send both.
func signalName(raw json.RawMessage) (string, error) {
	var name string
	if err := json.Unmarshal(raw, &name); err == nil {
		return name, nil
	}
	var n int
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", errors.New("signal must be a name such as \"SIGHUP\" or a number")
	}
	for sig, num := range signalNumbers {
		if num == n {
			return sig, nil
		}
	}
	return "", fmt.Errorf("signal %d is not one Perch sends; use 1 (HUP), 2 (INT), 3 (QUIT), 9 (KILL), 10 (USR1), 12 (USR2) or 15 (TERM)", n)
}

var signalNumbers = map[string]int{"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGKILL": 9, "SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15}

// signalMachine asks the machine's host to send its running process a
// signal ({"signal": "SIGHUP"} or, as fly-go's Kill sends it, a number).
func (s *Server) signalMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var body struct {
		Signal json.RawMessage `json:"signal"`
	}
	if err := decodeStrict(r, &body); err != nil {
		s.fail(w, r, err)
		return
	}
	if len(body.Signal) == 0 {
		s.fail(w, r, errf(http.StatusBadRequest, "signal is required, e.g. {\"signal\": \"SIGHUP\"}"))
		return
	}
	name, err := signalName(body.Signal)
	if err == nil && !validSignal(name) {
		err = fmt.Errorf("signal %q is not known; use e.g. SIGHUP, SIGINT, SIGTERM, SIGKILL, SIGUSR1", name)
	}
	if err != nil {
		s.fail(w, r, errf(http.StatusBadRequest, "%v", err))
		return
	}
	name = "SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG")
	st, _, _ := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		if m.Desired != store.DesireStarted || st.State != api.StateStarted {
			return errf(http.StatusPreconditionFailed, "machine %s is %s, not started; only a started machine's process can be signalled", m.ID, cmp.Or(st.State, api.StateCreated))
		}
		m.Signal = name
		m.SignalSeq++
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}
