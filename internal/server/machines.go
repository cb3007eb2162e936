package server

import (
	"cmp"
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
	if len(c.Init.Exec) > 0 {
		if len(c.Init.Entrypoint) > 0 || len(c.Init.Cmd) > 0 {
			return errf(http.StatusBadRequest, "config.init.exec is the whole command line and replaces entrypoint and cmd; send exec alone, or entrypoint and cmd")
		}
		// Stored as the entrypoint, which drops the image's cmd: the
		// process is exactly exec, as on Fly, on hosts of any version.
		c.Init.Entrypoint, c.Init.Exec = c.Init.Exec, nil
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
	if err := validateFiles(c.Files); err != nil { // files.go
		return err
	}
	if err := validateStatics(c.Statics); err != nil { // statics.go
		return err
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
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.LeaseTTL < 0 || req.LeaseTTL > maxLeaseTTL {
		s.fail(w, r, errf(http.StatusBadRequest, "lease_ttl must be 0-%d seconds, got %d", maxLeaseTTL, req.LeaseTTL))
		return
	}
	if err := refuseSuspended(a, !req.SkipLaunch); err != nil { // billing.go
		s.fail(w, r, err)
		return
	}
	spec, err := s.newMachine(ctx, a, req, tokenName(r))
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
	if spec.Lease != nil {
		m.Nonce = spec.Lease.Nonce
	}
	writeJSON(w, http.StatusOK, m)
}

// newMachine validates req, places the machine and writes its spec: what
// POST .../machines does, and what the autoscaler does for each machine
// it adds.
func (s *Server) newMachine(ctx context.Context, a api.App, req api.CreateMachineRequest, owner string) (store.MachineSpec, error) {
	if req.Region != "" {
		if err := s.validateRegion(req.Region); err != nil {
			return store.MachineSpec{}, err
		}
	}
	if req.Name != "" {
		if err := validMachineName(req.Name); err != nil {
			return store.MachineSpec{}, err
		}
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
		CreatedAt: now, UpdatedAt: now, Org: a.Org,
	}
	if req.SkipLaunch {
		spec.Desired = store.DesireStopped
	}
	spec.Cordoned = req.Cordoned || req.SkipServiceRegistration
	spec.InstanceID = newInstanceID()
	spec.Name = req.Name
	if spec.Name == "" {
		spec.Name = a.Name + "-" + spec.ID[:6]
	}
	if req.LeaseTTL > 0 {
		spec.Lease = newLease(owner, req.LeaseTTL, now)
	}
	// Placement reads every live machine and writes one; serialise it so two
	// machines never get the same address or overfill a host. Deleting an
	// app marks it under placeMu too, so no machine is written into an
	// app whose delete has begun.
	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		return store.MachineSpec{}, err
	}
	err := s.appOpen(ctx, a.Name)
	if err == nil {
		err = s.nameTakenIn(ctx, a.Name, spec.Name, "")
	}
	if err == nil {
		err = s.ensureAppIPs(ctx, a, &req.Config) // ips.go: before ports, which collide per address
	}
	if err == nil {
		err = s.checkPortSharing(ctx, a.Name, &req.Config) // ports.go
	}
	var volHost string
	if err == nil {
		var volRegion string
		volHost, volRegion, err = s.resolveMounts(ctx, a.Name, "", req.Region, &spec.Config) // volumes.go
		if volHost != "" {
			req.Region, spec.Region = volRegion, volRegion
		}
	}
	if err == nil && req.Region == "" {
		err = s.placeAnywhere(ctx, a.Name, &spec, req.Config.Guest)
	} else if err == nil {
		err = s.place(ctx, &spec, scheduler.Request{Region: req.Region, Guest: req.Config.Guest, Host: volHost})
	}
	if err == nil {
		err = s.sealSecrets(ctx, &spec, req.SkipSecrets) // secrets.go
	}
	if err == nil {
		err = s.grantMachine(spec) // hostauth.go: before the host sees it
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
	q := r.URL.Query()
	region := q.Get("region")
	states := listParam(q["state"])
	meta := map[string]string{} // ?metadata.KEY=VALUE, as Fly filters
	for k, v := range q {
		if key, ok := strings.CutPrefix(k, "metadata."); ok && len(v) > 0 {
			meta[key] = v[0]
		}
	}
	// Destroyed machines are not kept (their records go when their host
	// has destroyed them), so include_deleted adds none; machines being
	// destroyed are always listed.
	out := []api.Machine{}
	for _, sp := range specs {
		if region != "" && sp.Region != region {
			continue
		}
		if !metadataMatches(sp.Config.Metadata, meta) {
			continue
		}
		m, err := s.view(ctx, sp)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if len(states) > 0 && !slices.Contains(states, m.State) {
			continue
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b api.Machine) int { return a.CreatedAt.Compare(b.CreatedAt) })
	writeJSON(w, http.StatusOK, out)
}

func metadataMatches(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// listParam reads a query parameter given several times or as a
// comma-separated list (Fly's clients do both).
func listParam(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, x := range strings.Split(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
	}
	return out
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
	if err := decodeStrict(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if req.LeaseTTL != 0 {
		s.fail(w, r, errf(http.StatusBadRequest, "lease_ttl is taken only when a machine is created; lease this one with POST .../machines/%s/lease?ttl=%d", sp.ID, req.LeaseTTL))
		return
	}
	if req.Name != "" && req.Name != sp.Name {
		if err := validMachineName(req.Name); err != nil {
			s.fail(w, r, err)
			return
		}
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
	if err := s.placeMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	err = s.checkPortSharing(ctx, sp.App, &req.Config)
	if err == nil {
		var volHost string
		volHost, _, err = s.resolveMounts(ctx, sp.App, sp.ID, sp.Region, &req.Config) // volumes.go
		if err == nil && volHost != "" && volHost != sp.HostID {
			err = errf(http.StatusBadRequest, "config.mounts[0].volume %s is on host %s, machine %s on host %s; a machine does not move between hosts: create a new machine with this mount", req.Config.Mounts[0].Volume, volHost, sp.ID, sp.HostID)
		}
	}
	if err == nil && req.Name != "" && req.Name != sp.Name {
		err = s.nameTakenIn(ctx, sp.App, req.Name, sp.ID)
	}
	if err != nil {
		s.placeMu.Unlock()
		s.fail(w, r, err)
		return
	}
	sealed := store.MachineSpec{App: sp.App, ID: sp.ID, HostID: sp.HostID, Config: req.Config}
	if err := s.sealSecrets(ctx, &sealed, req.SkipSecrets); err != nil { // secrets.go
		s.placeMu.Unlock()
		s.fail(w, r, err)
		return
	}
	nonce := r.Header.Get(leaseNonceHeader)
	updated, err := store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if m.Desired == store.DesireDestroyed {
			return errf(http.StatusConflict, "machine %s is being destroyed", m.ID)
		}
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		if req.Name != "" {
			m.Name = req.Name
		}
		if req.SkipServiceRegistration {
			m.Cordoned = true
		}
		m.Config = req.Config
		m.Secrets, m.SecretsVersion = sealed.Secrets, sealed.SecretsVersion
		m.Generation++
		m.ConfigGeneration = m.Generation
		m.InstanceID = newInstanceID()
		m.StopSignal, m.StopTimeout = "", 0
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
	if err := leaseAllows(&sp, r.Header.Get(leaseNonceHeader)); err != nil {
		s.fail(w, r, err)
		return
	}
	st, _, _ := store.Get[store.MachineStatus](ctx, s.st.Status, sp.Key())
	q := r.URL.Query()
	force := q.Get("force") == "true" || q.Get("kill") == "true" // kill is Fly's spelling
	if st.State == api.StateStarted && sp.Desired == store.DesireStarted && !force {
		s.fail(w, r, errf(http.StatusPreconditionFailed, "machine %s is started; stop it first or destroy it with force=true (or Fly's kill=true)", sp.ID))
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
	if sp.Desired == store.DesireDestroyed && (sp.Force || !force) {
		return nil // already asked, as hard
	}
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		m.Desired = store.DesireDestroyed
		m.Force = force
		m.StopSignal, m.StopTimeout = "", 0
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
		if err := decodeStrict(r, &req); err != nil {
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
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
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
	nonce := r.Header.Get(leaseNonceHeader)
	_, err = store.Modify(ctx, s.st.Machines, sp.Key(), func(m *store.MachineSpec) error {
		if m.Desired == store.DesireDestroyed {
			return errf(http.StatusConflict, "machine %s is being destroyed", m.ID)
		}
		if err := leaseAllows(m, nonce); err != nil {
			return err
		}
		m.Desired = desired
		m.Generation++
		m.UpdatedAt = time.Now().UTC()
		// A stop's or restart's signal is for that request only; what
		// follows stops the machine as its stop_config says.
		m.StopSignal, m.StopTimeout = "", 0
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
		State: st.State, InstanceID: cmp.Or(sp.InstanceID, st.InstanceID), ImageRef: imageRef(sp, st), ExitCode: st.ExitCode,
		OOMKilled: st.OOMKilled, LastLogs: st.LastLogs, Events: newestFirst(st.Events), Checks: st.Checks, HostStatus: api.HostOK,
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

// newestFirst orders events as Fly's API does, the latest first; hosts
// append them.
// An exit code is also given where Fly's clients look for it.
func newestFirst(evs []api.Event) []api.Event {
	out := slices.Clone(evs)
	slices.Reverse(out)
	for i, e := range out {
		if e.ExitCode != nil && e.Request == nil {
			out[i].Request = &api.EventRequest{ExitEvent: &api.ExitEvent{ExitCode: *e.ExitCode, OOMKilled: e.OOMKilled, ExitedAt: e.Time().UTC()}}
		}
	}
	return out
}

// imageRef is the image the host runs, by digest, with the tag the
// config asked for.
func imageRef(sp store.MachineSpec, st store.MachineStatus) api.ImageRef {
	if st.ImageRef == "" {
		return api.ImageRef{}
	}
	r := api.ParseImageRef(st.ImageRef)
	if r.Tag == "" {
		r.Tag = api.ParseImageRef(sp.Config.Image).Tag
	}
	return r
}

func (s *Server) waitMachine(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	q := r.URL.Query()
	want := listParam(q["state"])
	if len(want) == 0 {
		want = []string{api.StateStarted}
	}
	sp, err := s.spec(ctx, r.PathValue("app"), r.PathValue("id"))
	var he *httpError
	if errors.As(err, &he) && he.code == http.StatusNotFound && slices.Contains(want, api.StateDestroyed) {
		// Records of destroyed machines are not kept: a machine of a live
		// app that is gone was destroyed, which is what the client awaits.
		if _, aerr := s.app(ctx, r.PathValue("app")); aerr == nil {
			writeJSON(w, http.StatusOK, map[string]any{"ok": true, "state": api.StateDestroyed})
			return
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, st := range want {
		switch st {
		case api.StateStarted, api.StateStopped, api.StateDestroyed, api.StateFailed, api.StateSuspended:
		default:
			s.fail(w, r, errf(http.StatusBadRequest, "cannot wait for state %q; use started, stopped, suspended, destroyed or failed (several: state=a&state=b or state=a,b)", st))
			return
		}
	}
	timeout := 60 * time.Second
	if t := q.Get("timeout"); t != "" {
		var secs int
		if _, err := fmt.Sscan(t, &secs); err != nil || secs < 1 || secs > 600 {
			s.fail(w, r, errf(http.StatusBadRequest, "timeout must be 1-600 seconds, got %q", t))
			return
		}
		timeout = time.Duration(secs) * time.Second
	}
	instance := q.Get("instance_id")
	if instance != "" && sp.InstanceID != "" && instance != sp.InstanceID {
		s.fail(w, r, errf(http.StatusBadRequest, "instance_id %s is not machine %s's current version (%s); wait without instance_id, or with the one the last update answered", instance, sp.ID, sp.InstanceID))
		return
	}
	st, err := s.awaitState(ctx, sp, want, timeout)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "state": st.State})
}
