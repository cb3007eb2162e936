package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// ClusterStatus is the control plane as `perch server status` shows it:
// its servers, JetStream's meta leader, each stream's replicas, and who
// runs each job held under a lease. A single server is a cluster of one.
type ClusterStatus struct {
	// Cluster is the cluster's name ("" for a single server).
	Cluster string `json:"cluster,omitempty"`
	// Server is the server that answered.
	Server string `json:"server,omitempty"`
	// MetaLeader is the server leading JetStream's meta group, which
	// creates streams and places their replicas; "" when the cluster has
	// lost its quorum.
	MetaLeader string `json:"meta_leader,omitempty"`
	// Quorum: a majority of the servers is up, so writes are taken.
	Quorum  bool            `json:"quorum"`
	Servers []ClusterServer `json:"servers"`
	Streams []ClusterStream `json:"streams"`
	Leases  []ClusterLease  `json:"leases"`
	// Errors are the parts that could not be read (a stream whose leader
	// is being elected).
	Errors []string `json:"errors,omitempty"`
}

// ClusterServer is one server of the cluster.
type ClusterServer struct {
	Name string `json:"name"`
	Up   bool   `json:"up"`
	// Current: it has every meta operation (stream creations, placements).
	Current bool `json:"current"`
	// LastSeen is how long ago the answering server last heard from it.
	LastSeen time.Duration `json:"last_seen_ns"`
	Lag      uint64        `json:"lag,omitempty"`
}

// ClusterStream is one JetStream stream (each bucket and object store is
// one) and its replicas.
type ClusterStream struct {
	Name     string           `json:"name"`
	Replicas int              `json:"replicas"`
	Leader   string           `json:"leader,omitempty"`
	Messages uint64           `json:"messages"`
	Bytes    uint64           `json:"bytes"`
	Peers    []ClusterReplica `json:"peers,omitempty"`
}

// ClusterReplica is a stream's copy on a server other than its leader.
type ClusterReplica struct {
	Name    string `json:"name"`
	Current bool   `json:"current"`
	Offline bool   `json:"offline,omitempty"`
	Lag     uint64 `json:"lag,omitempty"`
}

// ClusterLease is a job that runs on one server at a time.
type ClusterLease struct {
	Name   string `json:"name"`
	Holder string `json:"holder"`
	// Since is when the holder took it (zero if it did not say).
	Since     time.Time `json:"since,omitzero"`
	Refreshed time.Time `json:"refreshed"`
}

// ClusterStatus reads the control plane's cluster (admin token).
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var out ClusterStatus
	if err := c.do(ctx, http.MethodGet, "/v1/cluster", nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ServerRemoval is what removing a server from the cluster did.
type ServerRemoval struct {
	// Server is the server removed.
	Server string `json:"server"`
	// Streams are the streams (buckets, object stores) that had a
	// replica on it, each now placed on another server.
	Streams []string `json:"streams"`
}

// RemoveServer removes a server from the control plane's cluster for
// good (admin token): every stream's replica on it moves to another
// server, and JetStream forgets it. It answers once every stream is back
// at its replicas.
func (c *Client) RemoveServer(ctx context.Context, name string) (*ServerRemoval, error) {
	var out ServerRemoval
	if err := c.do(ctx, http.MethodDelete, "/v1/cluster/servers/"+url.PathEscape(name), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
