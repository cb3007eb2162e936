package server

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
)

// clusterStatus answers GET /v1/cluster (`perch server status`): the
// servers as this one's JetStream sees them, every stream's replicas
// (from its leader), and the leases. A part that cannot be read (no
// quorum) is named in Errors; the rest is still shown.
func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	out := api.ClusterStatus{Server: s.Name(), Quorum: true,
		Servers: []api.ClusterServer{}, Streams: []api.ClusterStream{}, Leases: []api.ClusterLease{}}
	if s.nats != nil {
		m := s.nats.Meta()
		out.Cluster, out.MetaLeader, out.Quorum = m.Cluster, m.Leader, m.Quorum()
		out.Servers = append(out.Servers, api.ClusterServer{Name: m.Self, Up: true, Current: m.SelfCurrent})
		for _, p := range m.Peers {
			out.Servers = append(out.Servers, api.ClusterServer{Name: p.Name, Up: !p.Offline, Current: p.Current, LastSeen: p.LastSeen, Lag: p.Lag})
		}
		slices.SortFunc(out.Servers, func(a, b api.ClusterServer) int { return cmp.Compare(a.Name, b.Name) })
	}
	streams := s.st.JetStream().ListStreams(ctx)
	for info := range streams.Info() {
		st := api.ClusterStream{Name: info.Config.Name, Replicas: info.Config.Replicas, Messages: info.State.Msgs, Bytes: info.State.Bytes}
		if out.Cluster == "" {
			st.Leader = out.Server // a server alone leads every stream
		}
		if c := info.Cluster; c != nil && out.Cluster != "" {
			st.Leader = c.Leader
			for _, p := range c.Replicas {
				st.Peers = append(st.Peers, api.ClusterReplica{Name: p.Name, Current: p.Current, Offline: p.Offline, Lag: p.Lag})
			}
		}
		out.Streams = append(out.Streams, st)
	}
	if err := streams.Err(); err != nil {
		out.Errors = append(out.Errors, "streams: "+err.Error())
	}
	slices.SortFunc(out.Streams, func(a, b api.ClusterStream) int { return cmp.Compare(a.Name, b.Name) })
	leases, err := s.st.Leases(ctx)
	if err != nil {
		out.Errors = append(out.Errors, err.Error())
	}
	for _, l := range leases {
		out.Leases = append(out.Leases, api.ClusterLease{Name: l.Name, Holder: l.Holder, Since: l.Since, Refreshed: l.Refreshed})
	}
	writeJSON(w, http.StatusOK, out)
}
