package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/store"
)

func (s *Server) hosts(ctx context.Context) ([]api.Host, error) {
	return store.List[api.Host](ctx, s.st.Hosts, ">")
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) {
	hs, err := s.hosts(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if hs == nil {
		hs = []api.Host{}
	}
	slices.SortFunc(hs, func(a, b api.Host) int { return cmpStr(a.Region+a.ID, b.Region+b.ID) })
	writeJSON(w, http.StatusOK, hs)
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// registerHost records a host and gives it an id and a machine subnet. A
// host that registers again with its id keeps both.
func (s *Server) registerHost(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var h api.Host
	if err := decode(r, &h); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.validateRegion(h.Region); err != nil {
		s.fail(w, r, err)
		return
	}
	if h.ID != "" {
		if err := validID("host", h.ID); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if h.MeshKey != "" {
		var k mesh.PublicKey
		if err := k.UnmarshalText([]byte(h.MeshKey)); err != nil {
			s.fail(w, r, errf(http.StatusBadRequest, "mesh_public_key %q is not a WireGuard public key (base64 of 32 bytes): %v", h.MeshKey, err))
			return
		}
	}
	if hp, ok := hostOf(r); ok { // hostauth.go: a host registers only itself
		if (h.ID != "" && h.ID != hp.ID) || h.Region != hp.Region {
			s.fail(w, r, errf(http.StatusForbidden, "host %s of region %s may register only itself, not host %q of region %q", hp.ID, hp.Region, h.ID, h.Region))
			return
		}
		h.ID = hp.ID
	}
	h.Role = "" // the control plane's own record is written only by itself
	if h.CPUs < 1 || h.MemoryMB < 64 {
		s.fail(w, r, errf(http.StatusBadRequest, "host must report cpus >= 1 and memory_mb >= 64, got %d and %d", h.CPUs, h.MemoryMB))
		return
	}
	if err := s.hostMu.LockCtx(ctx, s); err != nil {
		s.fail(w, r, err)
		return
	}
	defer s.hostMu.Unlock()
	if hp, ok := hostOf(r); ok {
		// Removed (removeHost) since its credential was checked.
		if _, _, err := store.Get[hostCredRecord](ctx, s.st.HostAuth, "host."+hp.ID); errors.Is(err, store.ErrNotFound) {
			s.fail(w, r, errf(http.StatusUnauthorized, "host %s was removed; join it again with a new join token (perch hosts join-token create)", hp.ID))
			return
		}
	}
	all, err := s.hosts(ctx)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	for _, o := range all {
		// WireGuard knows a peer by its key: a second host with one would
		// take the first's AllowedIPs on every other host.
		if h.MeshKey != "" && o.MeshKey == h.MeshKey && o.ID != h.ID {
			s.fail(w, r, errf(http.StatusConflict, "mesh_public_key %s is host %s's; each host needs its own WireGuard key: if %s is this machine's old identity, remove it (perch hosts remove %s), else remove mesh.key from this host's state dir to make a new key", h.MeshKey, o.ID, o.ID, o.ID))
			return
		}
	}
	if h.ID != "" {
		old, _, err := store.Get[api.Host](ctx, s.st.Hosts, h.ID)
		if err == nil {
			h.Subnet, h.MeshAddr, h.Subnet6 = old.Subnet, old.MeshAddr, old.Subnet6
		} else if !errors.Is(err, store.ErrNotFound) {
			s.fail(w, r, err)
			return
		}
	} else {
		h.ID = h.Region + "-" + randHex(4)
	}
	if h.Subnet == "" {
		sub, err := s.freeSubnet(all)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		h.Subnet = sub.String()
	}
	if err := assignMesh(all, &h); err != nil {
		s.fail(w, r, err)
		return
	}
	now := time.Now().UTC()
	h.Status, h.LastSeen, h.StartedAt = api.HostUp, now, now
	if _, err := store.Put(ctx, s.st.Hosts, h.ID, h); err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Info("host registered", "host", h.ID, "region", h.Region, "subnet", h.Subnet)
	writeJSON(w, http.StatusOK, h)
}

// hostHeartbeat writes a host's heartbeat into its record: the host owns
// its mesh endpoint, disk, RTTs and BGP report; the control plane keeps
// the rest (region, role, subnets, mesh address), so a host never writes
// perch_hosts itself and cannot claim another host's /64 (its NATS user
// may only read the bucket).
func (s *Server) hostHeartbeat(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.PathValue("id")
	if err := validID("host", id); err != nil {
		s.fail(w, r, err)
		return
	}
	if hp, ok := hostOf(r); ok && hp.ID != id {
		s.fail(w, r, errf(http.StatusForbidden, "host %s may heartbeat only itself, not host %q", hp.ID, id))
		return
	}
	body, err := decodeBody(r, &json.RawMessage{})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var hb api.HostHeartbeat
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&hb); err != nil {
		s.fail(w, r, errf(http.StatusBadRequest, "heartbeat: %v; a host reports only mesh_endpoint, mesh_mode, disk, rtt_ms and bgp (its region, subnets and mesh address are the control plane's, fixed at registration)", err))
		return
	}
	if hb.MeshEndpoint != "" {
		if _, err := netip.ParseAddrPort(hb.MeshEndpoint); err != nil {
			s.fail(w, r, errf(http.StatusBadRequest, "mesh_endpoint %q is not an address:port: %v", hb.MeshEndpoint, err))
			return
		}
	}
	switch hb.MeshMode {
	case "", "netstack", "tun":
	default:
		s.fail(w, r, errf(http.StatusBadRequest, "mesh_mode %q: want netstack or tun", hb.MeshMode))
		return
	}
	now := time.Now().UTC()
	_, err = store.Modify(ctx, s.st.Hosts, id, func(h *api.Host) error {
		if h.Role == api.HostRoleControl {
			return errf(http.StatusForbidden, "host %s is the control plane's own mesh record; only the control plane heartbeats it", id)
		}
		h.Status, h.LastSeen = api.HostUp, now
		h.MeshEndpoint, h.MeshMode, h.Disk, h.RTT, h.BGP = hb.MeshEndpoint, hb.MeshMode, hb.Disk, hb.RTT, hb.BGP
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		err = errf(http.StatusNotFound, "host %q is not registered (removed?); register it first (POST /v1/hosts)", id)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// assignMesh gives h a mesh address and a 6PN /64 for its machines,
// unless it has them. The host number is the one its IPv4 machine subnet
// names (the /24's second and third bytes: 172.30.5.0/24 is host 0x1e05)
// when no other host has it, else the lowest one free. Numbering by the
// subnet keeps the 6PN routes of two worlds on one kernel apart (each dev
// world claims its own /16, so its hosts' /64s differ from another's),
// where numbering every world from 1 made them replace each other's.
func assignMesh(hosts []api.Host, h *api.Host) error {
	if h.MeshAddr != "" && h.Subnet6 != "" {
		return nil
	}
	used := map[string]bool{}
	for _, o := range hosts {
		if o.ID != h.ID {
			used[o.Subnet6] = true
		}
	}
	try := func(n int) bool {
		addr, sub, err := mesh.HostAddrs(n)
		if err != nil || used[sub.String()] {
			return false
		}
		h.MeshAddr, h.Subnet6 = addr.String(), sub.String()
		return true
	}
	if p, err := netip.ParsePrefix(h.Subnet); err == nil && p.Addr().Is4() {
		b := p.Addr().As4()
		if try(int(b[1])<<8 | int(b[2])) {
			return nil
		}
	}
	for n := 1; n <= 0xffff; n++ {
		if try(n) {
			return nil
		}
	}
	return errf(http.StatusConflict, "no free mesh address left for host %s: every /64 of %s is taken; remove hosts that are gone", h.ID, mesh.Prefix)
}

// freeSubnet returns the first /24 of MachineNet no host uses.
func (s *Server) freeSubnet(hosts []api.Host) (netip.Prefix, error) {
	used := map[string]bool{}
	for _, h := range hosts {
		used[h.Subnet] = true
	}
	base := s.cfg.MachineNet.Masked()
	for p := netip.PrefixFrom(base.Addr(), 24); base.Contains(p.Addr()); {
		if !used[p.String()] && p.Addr() != base.Addr() {
			return p, nil
		}
		a := p.Addr().As4()
		a[2]++
		if a[2] == 0 {
			a[1]++
		}
		p = netip.PrefixFrom(netip.AddrFrom4(a), 24)
	}
	return netip.Prefix{}, errf(http.StatusConflict, "no free /24 left in machine network %s; start the server with a larger --machine-net", s.cfg.MachineNet)
}

func (s *Server) bootstrap(w http.ResponseWriter, r *http.Request) {
	u := s.cfg.NATSAdvertise
	if u == "" {
		u = s.natsURL
	}
	b := api.AgentBootstrap{NATSURL: u, Registry: s.ln.Addr().String()}
	if s.nats != nil && s.nats.LeafURL() != "" {
		// A host's leaf node authenticates as its host user: only with
		// the embedded NATS.
		b.NATSLeafURL = s.cfg.LeafAdvertise
		if b.NATSLeafURL == "" {
			b.NATSLeafURL = s.nats.LeafURL()
		}
	}
	h, ok := hostOf(r)
	if !ok {
		writeError(w, http.StatusBadRequest, "bootstrap is for hosts, with their host credential: start perch agent with --join-token (perch hosts join-token create --region R)")
		return
	}
	s.hostBootstrap(h, &b) // hostauth.go
	writeJSON(w, http.StatusOK, b)
}

func (s *Server) listRegions(w http.ResponseWriter, r *http.Request) {
	hs, err := s.hosts(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	drained, err := s.ipAllocator().Drained(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var out []api.Region
	for _, c := range s.cfg.World.Codes() {
		rg, _ := s.cfg.World.Lookup(c)
		n := 0
		for _, h := range hs {
			if h.Region == c && h.Status == api.HostUp && h.Role != api.HostRoleControl {
				n++
			}
		}
		out = append(out, api.Region{Code: c, Name: rg.City, Hosts: n, Draining: slices.Contains(drained, c)})
	}
	writeJSON(w, http.StatusOK, out)
}

// monitorHosts marks hosts down when they stop heartbeating.
func (s *Server) monitorHosts(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hs, err := s.hosts(ctx)
		if err != nil {
			continue
		}
		for _, h := range hs {
			if h.Status != api.HostUp || time.Since(h.LastSeen) < s.cfg.HostTimeout {
				continue
			}
			_, err := store.Modify(ctx, s.st.Hosts, h.ID, func(x *api.Host) error {
				if time.Since(x.LastSeen) >= s.cfg.HostTimeout {
					x.Status = api.HostDown
				}
				return nil
			})
			if err == nil {
				s.log.Warn("host down: no heartbeat", "host", h.ID, "region", h.Region, "last_seen", h.LastSeen)
			}
		}
	}
}
