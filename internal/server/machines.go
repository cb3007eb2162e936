package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/health"
	"github.com/perchhq/perch/internal/scheduler"
	"github.com/perchhq/perch/internal/store"
)

func newMachineID() string {
	b := make([]byte, 7)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// validateConfig checks what a host would otherwise fail on later.
func validateConfig(c *api.MachineConfig) error {
	if strings.TrimSpace(c.Image) == "" {
		return errf(http.StatusBadRequest, "config.image is required: name an image, e.g. registry.example.com/app:v1")
	}
	if c.Guest.CPUs < 0 || c.Guest.CPUs > 64 {
		return errf(http.StatusBadRequest, "config.guest.cpus must be 1-64, got %d", c.Guest.CPUs)
	}
	if c.Guest.MemoryMB < 0 || (c.Guest.MemoryMB > 0 && c.Guest.MemoryMB < 64) {
		return errf(http.StatusBadRequest, "config.guest.memory_mb must be at least 64, got %d", c.Guest.MemoryMB)
	}
	switch c.Guest.Runtime {
	case "", "runc":
	case "microvm":
		// The guest's kernel needs room of its own (microvm.MinMemoryMB).
		if c.Guest.MemoryMB > 0 && c.Guest.MemoryMB < 128 {
			return errf(http.StatusBadRequest, "config.guest.memory_mb must be at least 128 for a microvm, got %d", c.Guest.MemoryMB)
		}
	default:
		return errf(http.StatusBadRequest, "config.guest.runtime %q is not a runtime; use \"runc\" or \"microvm\"", c.Guest.Runtime)
	}
	if sc := c.StopConfig; sc != nil {
		if sc.Signal != "" && !validSignal(sc.Signal) {
			return errf(http.StatusBadRequest, "config.stop_config.signal %q is not known; use e.g. SIGTERM, SIGINT, SIGQUIT", sc.Signal)
		}
		if sc.Timeout != "" {
			if d, err := time.ParseDuration(sc.Timeout); err != nil || d < 0 || d > 24*time.Hour {
				return errf(http.StatusBadRequest, "config.stop_config.timeout %q is not a duration of at most a day; write e.g. \"30s\"", sc.Timeout)
			}
		}
	}
	switch c.Restart.Policy {
	case "", api.RestartNo, api.RestartAlways, api.RestartOnFailure:
	default:
		return errf(http.StatusBadRequest, "config.restart.policy %q is not valid; use no, always or on-failure", c.Restart.Policy)
	}
	for i, svc := range c.Services {
		if svc.InternalPort < 1 || svc.InternalPort > 65535 {
			return errf(http.StatusBadRequest, "config.services[%d].internal_port must be 1-65535, got %d", i, svc.InternalPort)
		}
		for j, p := range svc.Ports {
			if p.Port < 1 || p.Port > 65535 {
				return errf(http.StatusBadRequest, "config.services[%d].ports[%d].port must be 1-65535, got %d", i, j, p.Port)
			}
		}
		if err := validateScaleToZero(i, svc, c.Guest.MemoryMB); err != nil {
			return err
		}
		for j, c := range svc.Checks {
			if c.Port == 0 {
				c.Port = svc.InternalPort
			}
			if err := health.Validate(c); err != nil {
				return errf(http.StatusBadRequest, "config.services[%d].checks[%d]: %v", i, j, err)
			}
		}
	}
	return validatePorts(c) // ports.go
}

// validateScaleToZero checks a service's autostop settings
// (docs/autostop.md).
func validateScaleToZero(i int, svc api.Service, memoryMB int) error {
	switch svc.Autostop {
	case "", api.AutostopOff, api.AutostopStop:
	case api.AutostopSuspend:
		if memoryMB > api.MaxSuspendMemoryMB {
			return errf(http.StatusBadRequest, "config.services[%d].autostop \"suspend\" needs at most %d MB of memory, the machine has %d; use \"stop\" or give it less memory", i, api.MaxSuspendMemoryMB, memoryMB)
		}
	default:
		return errf(http.StatusBadRequest, "config.services[%d].autostop %q is not valid; use \"off\", \"stop\" or \"suspend\"", i, svc.Autostop)
	}
	if n := svc.MinMachinesRunning; n != nil && *n < 0 {
		return errf(http.StatusBadRequest, "config.services[%d].min_machines_running must be 0 or more, got %d", i, *n)
	}
	if svc.IdleTimeout != "" {
		if d, err := time.ParseDuration(svc.IdleTimeout); err != nil || d <= 0 || d > 24*time.Hour {
			return errf(http.StatusBadRequest, "config.services[%d].idle_timeout %q must be a positive duration of at most a day; write e.g. \"5m\"", i, svc.IdleTimeout)
		}
	}
	return nil
}

func (s *Server) validateRegion(region string) error {
	if region == "" {
		return errf(http.StatusBadRequest, "region is required: name one of %s", strings.Join(s.cfg.World.Codes(), ", "))
	}
	if _, ok := s.cfg.World.Lookup(region); !ok {
		return errf(http.StatusBadRequest, "unknown region %q; known regions: %s", region, strings.Join(s.cfg.World.Codes(), ", "))
	}
	return nil
}

func (s *Server) createMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.CreateMachineRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := refuseSuspended(a, !req.SkipLaunch); err != nil { // billing.go
		s.fail(w, r, err)
		return
	}
	spec, err := s.newMachine(ctx, a, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("machine created", "app", a.Name, "machine", spec.ID, "region", spec.Region, "host", spec.HostID, "ip", spec.PrivateIP)
	m, err := s.view(ctx, spec)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// newMachine validates req, places the machine and writes its spec: what
// POST .../machines does, and what the autoscaler does for each machine
// it adds.
func (s *Server) newMachine(ctx context.Context, a api.App, req api.CreateMachineRequest) (store.MachineSpec, error) {
	if err := s.validateRegion(req.Region); err != nil {
		return store.MachineSpec{}, err
	}
	if err := validateConfig(&req.Config); err != nil {
		return store.MachineSpec{}, err
	}
	if req.Config.Restart.Policy == "" {
		req.Config.Restart.Policy = api.RestartOnFailure
	}
	now := time.Now().UTC()
	spec := store.MachineSpec{
		ID: newMachineID(), App: a.Name, Region: req.Region, Config: req.Config,
		Desired: store.DesireStarted, Generation: 1, ConfigGeneration: 1,
		CreatedAt: now, UpdatedAt: now,
	}
	if req.SkipLaunch {
		spec.Desired = store.DesireStopped
	}
	spec.Cordoned = req.Cordoned
	spec.Name = req.Name
	if spec.Name == "" {
		spec.Name = a.Name + "-" + spec.ID[:6]
	}
	// Placement reads every live machine and writes one; serialise it so two
	// machines never get the same address or overfill a host.
	s.placeMu.Lock()
	err := s.checkPortSharing(ctx, a.Name, &req.Config) // ports.go
	if err == nil {
		err = s.place(ctx, &spec, scheduler.Request{Region: req.Region, Guest: req.Config.Guest})
	}
	if err == nil {
		_, err = store.Create(ctx, s.st.Machines, spec.Key(), spec)
	}
	s.placeMu.Unlock()
	if err != nil {
		return store.MachineSpec{}, err
	}
	return spec, nil
}

func (s *Server) place(ctx context.Context, spec *store.MachineSpec, req scheduler.Request) error {
	hosts, err := s.hosts(ctx)
	if err != nil {
		return err
	}
	live, err := store.List[store.MachineSpec](ctx, s.st.Machines, ">")
	if err != nil {
		return err
	}
	p, err := scheduler.Place(req, hosts, live)
	if err != nil {
		return err
	}
	spec.HostID, spec.PrivateIP = p.HostID, p.PrivateIP.String()
	return nil
}

func (s *Server) spec(ctx context.Context, app, id string) (store.MachineSpec, error) {
	if err := validID("machine", id); err != nil {
		return store.MachineSpec{}, err
	}
	if _, err := s.app(ctx, app); err != nil {
		return store.MachineSpec{}, err
	}
	m, _, err := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey(app, id))
	if errors.Is(err, store.ErrNotFound) {
		return m, errf(http.StatusNotFound, "machine %q not found in app %q; perch machine list shows its machines", id, app)
	}
	return m, err
}

func (s *Server) listMachines(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	a, err := s.app(ctx, r.PathValue("app"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, a.Name+".*")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	region := r.URL.Query().Get("region")
	out := []api.Machine{}
	for _, sp := range specs {
		if region != "" && sp.Region != region {
			continue
		}
		m, err := s.view(ctx, sp)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b api.Machine) int { return a.CreatedAt.Compare(b.CreatedAt) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getMachine(w http.ResponseWriter, r *http.Request) {
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
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) updateMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var req api.CreateMachineRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Region != "" && req.Region != sp.Region {
		s.fail(w, r, errf(http.StatusBadRequest, "a machine cannot move from %s to %s; create a new machine in %s instead", sp.Region, req.Region, req.Region))
		return
	}
	if err := validateConfig(&req.Config); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.Config.Restart.Policy == "" {
		req.Config.Restart.Policy = api.RestartOnFailure
	}
	// Under placeMu, as for a new machine: ports are claimed one at a time.
	s.placeMu.Lock()
	if err := s.checkPortSharing(ctx, sp.App, &req.Config); err != nil {
		s.placeMu.Unlock()
		s.fail(w, r, err)
		return
	}
	updated, err := store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if m.Desired == store.DesireDestroyed {
			return errf(http.StatusConflict, "machine %s is being destroyed", m.ID)
		}
		m.Config = req.Config
		m.Generation++
		m.ConfigGeneration = m.Generation
		if req.SkipLaunch {
			m.Desired = store.DesireStopped
		} else {
			m.Desired = store.DesireStarted
		}
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	s.placeMu.Unlock()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, err := s.view(ctx, updated)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

func (s *Server) deleteMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	st, _, _ := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	force := r.URL.Query().Get("force") == "true"
	if st.State == api.StateStarted && sp.Desired == store.DesireStarted && !force {
		s.fail(w, r, errf(http.StatusPreconditionFailed, "machine %s is started; stop it first or destroy it with force", sp.ID))
		return
	}
	if err := s.destroy(ctx, sp, force); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// destroy asks the machine's host to destroy it; force kills it at once
// instead of draining and stopping it first. A machine whose host is down
// is removed from the store at once; the host destroys the leftover when
// it comes back and finds no spec for it.
func (s *Server) destroy(ctx context.Context, sp store.MachineSpec, force bool) error {
	h, _, err := store.Get[api.Host](ctx, s.st.Hosts, sp.HostID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if errors.Is(err, store.ErrNotFound) || h.Status != api.HostUp {
		if err := store.Delete(ctx, s.st.Machines, sp.Key()); err != nil {
			return err
		}
		return store.Delete(ctx, s.st.Status, sp.Key())
	}
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		m.Desired = store.DesireDestroyed
		m.Force = force
		m.Generation++
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}

func (s *Server) startMachine(w http.ResponseWriter, r *http.Request) {
	if a, err := s.app(r.Context(), r.PathValue("app")); err == nil {
		if err := refuseSuspended(a, true); err != nil { // billing.go
			s.fail(w, r, err)
			return
		}
	}
	s.setDesired(w, r, store.DesireStarted, nil)
}

func (s *Server) stopMachine(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if r.ContentLength > 0 {
		if err := decode(r, &req); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if req.Signal != "" && !validSignal(req.Signal) {
		s.fail(w, r, errf(http.StatusBadRequest, "signal %q is not known; use e.g. SIGTERM, SIGINT, SIGKILL", req.Signal))
		return
	}
	var timeout time.Duration
	if req.Timeout != "" {
		d, err := time.ParseDuration(req.Timeout)
		if err != nil || d < 0 {
			s.fail(w, r, errf(http.StatusBadRequest, "timeout %q is not a duration; write e.g. \"10s\"", req.Timeout))
			return
		}
		timeout = d
	}
	s.setDesired(w, r, store.DesireStopped, func(m *store.MachineSpec) {
		m.StopSignal, m.StopTimeout = req.Signal, timeout
	})
}

// suspendMachine asks the machine's host to snapshot it and stop it
// (Fly's POST /machines/{id}/suspend); starting it resumes it. Only a
// started machine can be suspended (409), and only one with at most
// api.MaxSuspendMemoryMB of memory (400).
func (s *Server) suspendMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if mb := sp.Config.Guest.MemoryMB; mb > api.MaxSuspendMemoryMB {
		s.fail(w, r, errf(http.StatusBadRequest, "machine %s has %d MB of memory; only machines with at most %d MB can be suspended (stop it instead, or give it less memory)", sp.ID, mb, api.MaxSuspendMemoryMB))
		return
	}
	st, _, _ := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	if sp.Desired != store.DesireStarted || st.State != api.StateStarted || st.Generation != sp.Generation {
		state := st.State
		if state == "" {
			state = api.StateCreated
		}
		s.fail(w, r, errf(http.StatusConflict, "machine %s is %s, not started; only a started machine can be suspended", sp.ID, state))
		return
	}
	s.setDesired(w, r, store.DesireSuspended, nil)
}

// cordonMachine and uncordonMachine take a machine out of the edges'
// rotation and put it back, without touching its process. The spec's
// generation stays: nothing for its host to do.
func (s *Server) cordonMachine(w http.ResponseWriter, r *http.Request)   { s.setCordon(w, r, true) }
func (s *Server) uncordonMachine(w http.ResponseWriter, r *http.Request) { s.setCordon(w, r, false) }

func (s *Server) setCordon(w http.ResponseWriter, r *http.Request, on bool) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		m.Cordoned = on
		m.UpdatedAt = time.Now().UTC()
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

func validSignal(sig string) bool {
	switch strings.TrimPrefix(strings.ToUpper(sig), "SIG") {
	case "TERM", "INT", "QUIT", "KILL", "HUP", "USR1", "USR2":
		return true
	}
	return false
}

func (s *Server) setDesired(w http.ResponseWriter, r *http.Request, desired string, also func(*store.MachineSpec)) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	st, _, _ := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	prev := st.State
	if prev == "" {
		prev = api.StateCreated
	}
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if m.Desired == store.DesireDestroyed {
			return errf(http.StatusConflict, "machine %s is being destroyed", m.ID)
		}
		m.Desired = desired
		m.Generation++
		m.UpdatedAt = time.Now().UTC()
		if also != nil {
			also(m)
		}
		return nil
	})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "previous_state": prev})
}

// view merges a spec with its host's last report into the API's shape.
func (s *Server) view(ctx context.Context, sp store.MachineSpec) (api.Machine, error) {
	st, _, err := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.Machine{}, err
	}
	h, _, err := store.Get[api.Host](ctx, s.st.Hosts, sp.HostID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.Machine{}, err
	}
	return machineView(sp, st, h), nil
}

func machineView(sp store.MachineSpec, st store.MachineStatus, h api.Host) api.Machine {
	m := api.Machine{
		ID: sp.ID, Name: sp.Name, AppName: sp.App, Region: sp.Region, PrivateIP: sp.PrivateIP,
		HostID: sp.HostID, Config: sp.Config, CreatedAt: sp.CreatedAt, UpdatedAt: sp.UpdatedAt,
		State: st.State, InstanceID: st.InstanceID, ImageRef: st.ImageRef, ExitCode: st.ExitCode,
		LastLogs: st.LastLogs, Events: st.Events, Checks: st.Checks, HostStatus: api.HostOK,
		Restarts: st.Restarts, Cordoned: sp.Cordoned,
	}
	// Readiness is about the generation the host last answered; a spec
	// changed since is not ready until its host says so.
	if st.Generation == sp.Generation && sp.Desired == store.DesireStarted {
		m.Ready, m.NotReady = st.Ready, st.NotReady
	}
	if m.State == "" || st.Generation == 0 {
		m.State = api.StateCreated
	}
	if sp.Desired == store.DesireDestroyed && m.State != api.StateDestroyed {
		m.State = api.StateDestroying
	}
	if st.UpdatedAt.After(m.UpdatedAt) {
		m.UpdatedAt = st.UpdatedAt
	}
	if h.Status != api.HostUp {
		m.HostStatus = api.HostUnreachable
	}
	return m
}

func (s *Server) waitMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	want := r.URL.Query().Get("state")
	if want == "" {
		want = api.StateStarted
	}
	switch want {
	case api.StateStarted, api.StateStopped, api.StateDestroyed, api.StateFailed, api.StateSuspended:
	default:
		s.fail(w, r, errf(http.StatusBadRequest, "cannot wait for state %q; use started, stopped, suspended, destroyed or failed", want))
		return
	}
	timeout := 60 * time.Second
	if t := r.URL.Query().Get("timeout"); t != "" {
		var secs int
		if _, err := fmt.Sscan(t, &secs); err != nil || secs < 1 || secs > 600 {
			s.fail(w, r, errf(http.StatusBadRequest, "timeout must be 1-600 seconds, got %q", t))
			return
		}
		timeout = time.Duration(secs) * time.Second
	}
	st, err := s.awaitState(ctx, sp, want, timeout)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "state": st.State})
}
