package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
	"github.com/perchhq/perch/internal/store"
	"golang.org/x/crypto/bcrypt"
)

// Hosts join with a single-use join token and get a host credential
// (docs/security.md, "Hosts and their credentials"). perch_host_auth keeps
// only hashes: "join.<sha256 of the token>" and "host.<id>".

const (
	joinTokenPrefix   = "perch_join_"
	defaultJoinExpiry = time.Hour
	maxJoinExpiry     = 30 * 24 * time.Hour
	// The secret is 192 random bits: bcrypt's work factor, which slows
	// guessing a person's password, adds nothing to it and would only
	// slow every connection of a host to NATS.
	hostCredentialCost = bcrypt.MinCost
)

type joinRecord struct {
	Region    string    `json:"region"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

type hostCredRecord struct {
	HostID string `json:"host_id"`
	Region string `json:"region"`
	// Hash is the SHA-256 of the secret (the API's check, per request);
	// NATSBcrypt its bcrypt hash, which the embedded NATS compares.
	Hash       string    `json:"hash"`
	NATSBcrypt string    `json:"nats_bcrypt"`
	CreatedAt  time.Time `json:"created_at"`
}

// hostIdentity is the host a request authenticated as.
type hostIdentity struct{ ID, Region string }

// hostOf is the host that authorised r, if a host credential did: the
// principal of kind host (auth.go's guard keeps it to scopeAgent routes;
// registryauth.go to pulls), narrowed to its region.
func hostOf(r *http.Request) (hostIdentity, bool) {
	p := principalOf(r)
	if p.Kind != auth.KindHost || len(p.Regions) != 1 {
		return hostIdentity{}, false
	}
	return hostIdentity{ID: p.Host, Region: p.Regions[0]}, true
}

// createJoinToken is POST /v1/hosts/join-tokens (operator tokens only).
func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	var req api.JoinTokenRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.validateRegion(req.Region); err != nil {
		s.fail(w, r, err)
		return
	}
	expiry := defaultJoinExpiry
	if req.Expiry != "" {
		d, err := time.ParseDuration(req.Expiry)
		if err != nil || d < time.Minute || d > maxJoinExpiry {
			s.fail(w, r, errf(http.StatusBadRequest, "expiry %q: want a duration from 1m to 720h, such as 1h or 24h", req.Expiry))
			return
		}
		expiry = d
	}
	jt, err := s.newJoinToken(r.Context(), req.Region, expiry)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("join token created", "region", jt.Region, "expires_at", jt.ExpiresAt, "by", tokenName(r))
	writeJSON(w, http.StatusCreated, jt)
}

func (s *Server) newJoinToken(ctx context.Context, region string, expiry time.Duration) (api.JoinToken, error) {
	tok := joinTokenPrefix + randHex(24)
	now := time.Now().UTC()
	rec := joinRecord{Region: region, CreatedAt: now, ExpiresAt: now.Add(expiry)}
	if _, err := store.Put(ctx, s.st.HostAuth, "join."+tokenKey(tok), rec); err != nil {
		return api.JoinToken{}, err
	}
	return api.JoinToken{Token: tok, Region: region, ExpiresAt: rec.ExpiresAt}, nil
}

// CreateJoinToken makes a join token for one host of region (perch dev's
// agents join with it).
func (s *Server) CreateJoinToken(ctx context.Context, region string, expiry time.Duration) (string, error) {
	if err := s.validateRegion(region); err != nil {
		return "", err
	}
	jt, err := s.newJoinToken(ctx, region, expiry)
	return jt.Token, err
}

// joinHost is POST /v1/hosts/join, authenticated by a join token alone:
// it spends the token and answers a new host's credential.
func (s *Server) joinHost(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tok = strings.TrimSpace(tok)
	if !strings.HasPrefix(tok, joinTokenPrefix) {
		writeError(w, http.StatusUnauthorized, "joining needs a join token (perch_join_...) as the bearer token: create one with perch hosts join-token create --region R")
		return
	}
	key := "join." + tokenKey(tok)
	rec, rev, err := store.Get[joinRecord](ctx, s.st.HostAuth, key)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusUnauthorized, "join token unknown or already used: a join token is good for one host, once; create another with perch hosts join-token create")
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	// Spent by the first to delete it at the revision read: two hosts
	// racing with one token do not both join.
	if err := s.st.HostAuth.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		writeError(w, http.StatusUnauthorized, "join token already used: a join token is good for one host, once; create another with perch hosts join-token create")
		return
	}
	if time.Now().After(rec.ExpiresAt) {
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("join token expired at %s: create another with perch hosts join-token create", rec.ExpiresAt.Format(time.RFC3339)))
		return
	}
	cred := api.HostCredential{HostID: rec.Region + "-" + randHex(4), Region: rec.Region, Secret: randHex(24)}
	bc, err := bcrypt.GenerateFromPassword([]byte(cred.Secret), hostCredentialCost)
	if err != nil {
		s.fail(w, r, fmt.Errorf("server: hash host credential: %w", err))
		return
	}
	hr := hostCredRecord{HostID: cred.HostID, Region: cred.Region, Hash: tokenKey(cred.Secret), NATSBcrypt: string(bc), CreatedAt: time.Now().UTC()}
	if _, err := store.Create(ctx, s.st.HostAuth, "host."+cred.HostID, hr); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.addHostUsers(hr); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("host joined", "host", cred.HostID, "region", cred.Region)
	writeJSON(w, http.StatusOK, cred)
}

// addHostUsers gives hosts their NATS users on the embedded server. An
// external NATS is the operator's to configure (docs/security.md).
func (s *Server) addHostUsers(recs ...hostCredRecord) error {
	if s.nats == nil || len(recs) == 0 {
		return nil
	}
	users := make([]store.HostUser, len(recs))
	for i, h := range recs {
		users[i] = store.HostUser{HostID: h.HostID, Region: h.Region, PassBcrypt: h.NATSBcrypt}
	}
	if err := s.nats.SetHostUsers(users...); err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// loadHostUsers configures the NATS users of every host that joined,
// with the machines placed on each.
func (s *Server) loadHostUsers(ctx context.Context) error {
	recs, err := store.List[hostCredRecord](ctx, s.st.HostAuth, "host.*")
	if err != nil {
		return fmt.Errorf("server: host credentials: %w", err)
	}
	if err := s.addHostUsers(recs...); err != nil {
		return err
	}
	return s.loadGrants(ctx)
}

// isHostCredential says whether tok has a host credential's form
// ("perch_host_<id>_<secret>"), for auth.go's principalFor.
func isHostCredential(tok string) bool { return strings.HasPrefix(tok, api.HostCredentialPrefix) }

// hostPrincipal checks a host credential: a principal of kind host,
// narrowed to the host's region.
func (s *Server) hostPrincipal(ctx context.Context, tok string) (auth.Principal, error) {
	bad := errf(http.StatusUnauthorized, "invalid host credential: it is not known to this server; join the host again with a new join token (perch hosts join-token create)")
	rest, _ := strings.CutPrefix(tok, api.HostCredentialPrefix)
	i := strings.LastIndexByte(rest, '_')
	if i <= 0 {
		return auth.Principal{}, bad
	}
	id, secret := rest[:i], rest[i+1:]
	if validID("host", id) != nil {
		return auth.Principal{}, bad
	}
	var rec hostCredRecord
	err := s.readThroughElection(ctx, func(ctx context.Context) (err error) {
		rec, _, err = store.Get[hostCredRecord](ctx, s.st.HostAuth, "host."+id)
		return err
	})
	// A cluster's buckets are read from their leaders (store.leaderReads),
	// so a host's first request, right after its join through another
	// server, finds its credential.
	if errors.Is(err, store.ErrNotFound) {
		return auth.Principal{}, bad
	}
	if err != nil {
		return auth.Principal{}, fmt.Errorf("look up host credential of %s: %w", id, err)
	}
	sum := sha256.Sum256([]byte(secret))
	if subtle.ConstantTimeCompare([]byte(hex.EncodeToString(sum[:])), []byte(rec.Hash)) != 1 {
		return auth.Principal{}, bad
	}
	return auth.Principal{Kind: auth.KindHost, Host: rec.HostID, Name: "host " + rec.HostID,
		Restrictions: auth.Restrictions{Regions: []string{rec.Region}}}, nil
}

// hostBootstrap tells host h how to reach NATS as its own user.
func (s *Server) hostBootstrap(h hostIdentity, b *api.AgentBootstrap) {
	if s.nats == nil {
		// External NATS: the operator's users (docs/security.md); until
		// then the control plane's token.
		b.NATSToken = s.natsTok
		return
	}
	b.NATSUser, b.NATSInboxPrefix = h.ID, store.HostInboxPrefix(h.ID)
}

// grantGrace is how long a host may still write a machine's keys after
// its spec is gone: the host deletes the spec, then the status.
const grantGrace = 30 * time.Second

// machineGrants are the machines each host may write (specs, statuses,
// log subjects), from the specs placed on it: zero time while the spec
// lives, else when it went.
type machineGrants struct {
	mu     sync.Mutex // held across the reload it asks for
	byHost map[string]map[string]time.Time
}

// grantMachine lets spec's host write the machine's keys, before the
// spec is written (DESIGN invariant 3: the host acts on the spec only).
func (s *Server) grantMachine(spec store.MachineSpec) error {
	return s.grant(spec.HostID, spec.Key())
}

// grantVolume lets host delete the record of volume key ("<app>.<id>"),
// which it does for a volume destroyed while it was down. The grant
// lasts while the control plane runs (a volume's host never changes).
func (s *Server) grantVolume(host, key string) error {
	return s.grant(host, store.VolumeGrantPrefix+key)
}

func (s *Server) grant(host, key string) error {
	if s.nats == nil {
		return nil
	}
	g := s.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	ks := g.byHost[host]
	if ks == nil {
		ks = map[string]time.Time{}
		g.byHost[host] = ks
	}
	if t, ok := ks[key]; ok && t.IsZero() {
		return nil
	}
	ks[key] = time.Time{}
	return s.applyGrants(host)
}

// applyGrants reloads the NATS users of hosts (all if none named).
func (s *Server) applyGrants(hosts ...string) error {
	if len(hosts) == 0 {
		for h := range s.grants.byHost {
			hosts = append(hosts, h)
		}
	}
	by := map[string][]string{}
	for _, h := range hosts {
		by[h] = slices.Sorted(maps.Keys(s.grants.byHost[h]))
	}
	if err := s.nats.SetHostMachines(by); err != nil {
		return fmt.Errorf("server: grant machines to hosts: %w", err)
	}
	return nil
}

// loadGrants reads every spec's host at start, before hosts connect.
func (s *Server) loadGrants(ctx context.Context) error {
	s.grants = &machineGrants{byHost: map[string]map[string]time.Time{}}
	if s.nats == nil {
		return nil
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, ">")
	if err != nil {
		return fmt.Errorf("server: machines for host grants: %w", err)
	}
	vols, err := store.List[store.VolumeRecord](ctx, s.st.Volumes, "*.*")
	if err != nil {
		return fmt.Errorf("server: volumes for host grants: %w", err)
	}
	g := s.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	add := func(host, key string) {
		if g.byHost[host] == nil {
			g.byHost[host] = map[string]time.Time{}
		}
		g.byHost[host][key] = time.Time{}
	}
	for _, sp := range specs {
		add(sp.HostID, sp.Key())
	}
	for _, v := range vols {
		if v.HostID != "" {
			add(v.HostID, store.VolumeGrantPrefix+v.Key())
		}
	}
	return s.applyGrants()
}

// runGrants follows the specs: a machine whose spec is gone loses its
// grant after grantGrace.
func (s *Server) runGrants(ctx context.Context) {
	if s.nats == nil {
		return
	}
	g := s.grants
	log := s.log.With("component", "host-grants")
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.watchGrants(ctx, log) })
	if s.clustered() {
		wg.Go(func() { s.watchHostUsers(ctx, log) })
	}
	t := time.NewTicker(grantGrace / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.mu.Lock()
		var changed []string
		for h, ks := range g.byHost {
			for k, at := range ks {
				if !at.IsZero() && time.Since(at) > grantGrace {
					delete(ks, k)
					changed = append(changed, h)
				}
			}
		}
		if len(changed) > 0 {
			if err := s.applyGrants(slices.Compact(slices.Sorted(slices.Values(changed)))...); err != nil {
				log.Warn("revoking the grants of machines that are gone", "err", err)
			}
		}
		g.mu.Unlock()
	}
}

// watchGrants marks the grants of machines whose spec went.
func (s *Server) watchGrants(ctx context.Context, log *slog.Logger) {
	g := s.grants
	s.st.Watch(ctx, s.st.Machines, log, func(c store.Change) {
		g.mu.Lock()
		defer g.mu.Unlock()
		now := time.Now()
		gone := func(key string) {
			for _, ks := range g.byHost {
				if t, ok := ks[key]; ok && t.IsZero() {
					ks[key] = now
				}
			}
		}
		// In a cluster, another server may have placed the machine:
		// its host gets the grant here too (a host may connect to any).
		var added []string
		seen := func(key string, value []byte) {
			var sp store.MachineSpec
			if !s.clustered() || json.Unmarshal(value, &sp) != nil || sp.HostID == "" {
				return
			}
			if g.byHost[sp.HostID] == nil {
				g.byHost[sp.HostID] = map[string]time.Time{}
			}
			if t, ok := g.byHost[sp.HostID][key]; !ok || !t.IsZero() {
				g.byHost[sp.HostID][key] = time.Time{}
				added = append(added, sp.HostID)
			}
		}
		defer func() {
			if len(added) == 0 {
				return
			}
			if err := s.applyGrants(slices.Compact(slices.Sorted(slices.Values(added)))...); err != nil {
				log.Warn("granting machines placed by another server", "err", err)
			}
		}()
		switch {
		case c.All != nil:
			for _, ks := range g.byHost {
				for k := range ks {
					if _, ok := c.All[k]; !ok && !strings.HasPrefix(k, store.VolumeGrantPrefix) {
						gone(k)
					}
				}
			}
			for k, v := range c.All {
				seen(k, v)
			}
		case c.Deleted:
			gone(c.Key)
		default:
			seen(c.Key, c.Value)
			// A spec put after a snapshot that did not hold it yet.
			var sp store.MachineSpec
			if json.Unmarshal(c.Value, &sp) == nil && sp.HostID != "" {
				if ks := g.byHost[sp.HostID]; ks != nil {
					if _, ok := ks[c.Key]; ok {
						ks[c.Key] = time.Time{}
					}
				}
			}
		}
	})
}

// watchHostUsers follows perch_host_auth in a cluster: a host that
// joined through another server gets its NATS user on this one too (it
// may connect to any), and a removed one loses it.
func (s *Server) watchHostUsers(ctx context.Context, log *slog.Logger) {
	s.st.Watch(ctx, s.st.HostAuth, log, func(c store.Change) {
		var recs []hostCredRecord
		add := func(key string, v []byte) {
			var r hostCredRecord
			if strings.HasPrefix(key, "host.") && json.Unmarshal(v, &r) == nil && r.HostID != "" {
				recs = append(recs, r)
			}
		}
		switch {
		case c.All != nil:
			for k, v := range c.All {
				add(k, v)
			}
		case c.Deleted:
			if id, ok := strings.CutPrefix(c.Key, "host."); ok {
				if err := s.nats.RemoveHostUser(id); err != nil {
					log.Warn("removing the NATS user of a removed host", "host", id, "err", err)
				}
				s.grants.mu.Lock()
				delete(s.grants.byHost, id)
				s.grants.mu.Unlock()
			}
			return
		default:
			add(c.Key, c.Value)
		}
		if err := s.addHostUsers(recs...); err != nil {
			log.Warn("adding the NATS users of hosts", "err", err)
		}
	})
}

// removeHost is DELETE /v1/hosts/{id} (operator only, perch hosts remove):
// the host's credential is revoked (its API requests are 401 from now
// on), its NATS user removed and its connections closed at once, its
// grants dropped, and its record deleted, which takes it out of the
// scheduler, the edges' routes and every other host's mesh peers. Its
// machines stay as machines of a host that is gone, as for a dead host:
// they show host_status "unreachable", get no traffic, and a destroy
// removes them at once (destroy).
func (s *Server) removeHost(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	if err := validID("host", id); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.hostMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.hostMu.Unlock()
	h, _, herr := store.Get[api.Host](ctx, s.st.Hosts, id)
	if herr != nil && !errors.Is(herr, store.ErrNotFound) {
		s.fail(w, r, herr)
		return
	}
	_, _, cerr := store.Get[hostCredRecord](ctx, s.st.HostAuth, "host."+id)
	if cerr != nil && !errors.Is(cerr, store.ErrNotFound) {
		s.fail(w, r, cerr)
		return
	}
	if errors.Is(herr, store.ErrNotFound) && errors.Is(cerr, store.ErrNotFound) {
		s.fail(w, r, errf(http.StatusNotFound, "host %q not found; perch hosts lists the hosts", id))
		return
	}
	if h.Role == api.HostRoleControl {
		s.fail(w, r, errf(http.StatusBadRequest, "host %s is the control plane's own mesh record, not a host; it cannot be removed", id))
		return
	}
	if err := store.Delete(ctx, s.st.HostAuth, "host."+id); err != nil {
		s.fail(w, r, fmt.Errorf("revoke the credential of host %s: %w", id, err))
		return
	}
	if s.nats != nil {
		if err := s.nats.RemoveHostUser(id); err != nil {
			s.fail(w, r, fmt.Errorf("remove host %s from NATS: %w", id, err))
			return
		}
		s.grants.mu.Lock()
		delete(s.grants.byHost, id)
		s.grants.mu.Unlock()
	}
	if err := store.Delete(ctx, s.st.Hosts, id); err != nil {
		s.fail(w, r, fmt.Errorf("delete the record of host %s: %w", id, err))
		return
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, ">")
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var lost []string
	for _, sp := range specs {
		if sp.HostID == id {
			lost = append(lost, sp.App+"/"+sp.ID)
		}
	}
	s.log.Warn("host removed: credential revoked, NATS connections closed", "host", id, "region", h.Region, "machines_lost", len(lost))
	writeJSON(w, http.StatusOK, api.RemovedHost{ID: id, LostMachines: lost})
}
