package server

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/meshhost"
	"github.com/perchhq/perch/internal/store"
)

// MeshConfig makes the control plane a member of the WireGuard mesh.
type MeshConfig struct {
	// Port is WireGuard's UDP port (0 picks one).
	Port uint16
	// Host is the address other hosts reach this one at (its endpoint's
	// IP); the API listen address's host if empty.
	Host string
	// Region is where the control plane runs, for the simulated latency.
	Region string
	// Latency is the route-inflation factor of simulated fiber latency; 0
	// is off (always, outside one-machine worlds).
	Latency float64
}

// joinMesh registers the control plane's own record in the host list
// (role "control": never given machines), starts its mesh node and keeps
// the record fresh.
func (s *Server) joinMesh(ctx context.Context) (*meshhost.Member, string, error) {
	mc := s.cfg.Mesh
	dir := s.cfg.DataDir
	pub, err := meshhost.LoadKey(dir)
	if err != nil {
		return nil, "", fmt.Errorf("server: mesh key: %w", err)
	}
	id := "control-" + hex.EncodeToString(pub[:4])
	h := api.Host{ID: id, Region: mc.Region, Role: api.HostRoleControl, MeshKey: pub.String()}
	s.hostMu.Lock()
	all, err := s.hosts(ctx)
	if err == nil {
		if old, _, gerr := store.Get[api.Host](ctx, s.st.Hosts, id); gerr == nil {
			h.MeshAddr, h.Subnet6 = old.MeshAddr, old.Subnet6
		} else if !errors.Is(gerr, store.ErrNotFound) {
			err = gerr
		}
	}
	if err == nil {
		err = assignMesh(all, &h)
	}
	if err == nil {
		_, err = store.Put(ctx, s.st.Hosts, id, h)
	}
	s.hostMu.Unlock()
	if err != nil {
		return nil, "", fmt.Errorf("server: mesh record: %w", err)
	}
	addr, err := netip.ParseAddr(h.MeshAddr)
	if err != nil {
		return nil, "", fmt.Errorf("server: mesh address %q: %w", h.MeshAddr, err)
	}
	m, err := meshhost.Start(meshhost.Config{
		StateDir: dir, Addr: addr, Region: mc.Region, Port: mc.Port, Latency: mc.Latency,
		World: s.cfg.World, RTTInterval: time.Second, Log: s.log,
	})
	if err != nil {
		return nil, "", fmt.Errorf("server: mesh: %w", err)
	}
	return m, id, nil
}

// runMesh heartbeats the control plane's record (with what it measured)
// and follows the host list until ctx is done.
func (s *Server) runMesh(ctx context.Context, m *meshhost.Member, id string) {
	host := s.cfg.Mesh.Host
	if host == "" {
		host = s.ln.Addr().(*net.TCPAddr).IP.String()
		if s.ln.Addr().(*net.TCPAddr).IP.IsUnspecified() {
			host = "127.0.0.1"
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { m.Run(ctx, s.st, id) })
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		now := time.Now().UTC()
		_, err := store.Modify(ctx, s.st.Hosts, id, func(h *api.Host) error {
			h.Status, h.LastSeen = api.HostUp, now
			if h.StartedAt.IsZero() {
				h.StartedAt = now
			}
			h.Address, h.MeshEndpoint = host, m.Endpoint(host)
			h.RTT = meshhost.Millis(m.RTT())
			return nil
		})
		if err != nil && ctx.Err() == nil {
			s.log.Warn("control plane mesh heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
