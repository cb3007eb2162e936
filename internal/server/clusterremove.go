package server

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// removeServerTimeout bounds a removal: moving every stream's replica
// copies its content to another server.
const removeServerTimeout = 2 * time.Minute

// removeServer answers DELETE /v1/cluster/servers/{name} (`perch server
// remove NAME`): the server's replicas move to the others and JetStream
// forgets it (store.Embedded.RemoveServer).
func (s *Server) removeServer(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.nats == nil {
		writeError(w, http.StatusBadRequest, "this control plane uses an external NATS (--nats): remove the server from that NATS cluster with its own tools (nats server raft peer-remove)")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), removeServerTimeout)
	defer cancel()
	moved, err := s.nats.RemoveServer(ctx, name)
	var re *store.RemovalError
	switch {
	case errors.Is(err, store.ErrNotClustered):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.As(err, &re):
		writeError(w, http.StatusConflict, re.Error())
		return
	case err != nil:
		s.log.Error("remove server", "server", name, "err", err)
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	s.log.Info("server removed from the cluster", "server", name, "streams moved", len(moved))
	if moved == nil {
		moved = []string{}
	}
	writeJSON(w, http.StatusOK, api.ServerRemoval{Server: name, Streams: moved})
}
