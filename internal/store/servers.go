package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotClustered: the operation needs a cluster of embedded servers.
var ErrNotClustered = errors.New("this server is not one of a cluster (perch server --cluster-name): a single server has no other server to remove")

// RemovalError is a removal refused before anything changed: what was
// wrong and what to do.
type RemovalError struct{ Msg string }

func (e *RemovalError) Error() string { return e.Msg }

// RemoveServer removes the server name from the cluster for good: every
// stream (bucket, object store) with a replica on it places that replica
// on another server ($JS.API.STREAM.PEER.REMOVE.<stream>, in the
// control plane's account), then JetStream's meta group forgets it
// ($JS.API.SERVER.REMOVE, from the system account as SystemUser), and it
// waits until every stream is back at its replicas, each current, none
// on name. It refuses, changing nothing, to remove this server itself, a
// name the cluster does not have, or a server whose removal would leave
// fewer servers than a stream's replicas. It returns the streams moved.
func (e *Embedded) RemoveServer(ctx context.Context, name string) ([]string, error) {
	m := e.Meta()
	if !m.Clustered {
		return nil, ErrNotClustered
	}
	if name == m.Self {
		return nil, &RemovalError{fmt.Sprintf("%s is the server answering: a server does not remove itself; stop it and ask another server of the cluster", name)}
	}
	names := []string{m.Self}
	found := false
	for _, p := range m.Peers {
		names = append(names, p.Name)
		found = found || p.Name == name
	}
	slices.Sort(names)
	if !found {
		return nil, &RemovalError{fmt.Sprintf("cluster %s has no server named %q; its servers: %s", m.Cluster, name, strings.Join(names, ", "))}
	}
	nc, err := nats.Connect(e.url, nats.UserInfo(ServerUser, e.password), nats.Name("perch-server-remove"))
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	infos, err := streamInfos(ctx, js)
	if err != nil {
		return nil, err
	}
	left := len(names) - 1
	var on []string
	for _, si := range infos {
		if si.Config.Replicas > left {
			return nil, &RemovalError{fmt.Sprintf("removing %s would leave %d servers for stream %s, kept at %d replicas: add a server first (docs/operations.md, adding a server), or replace %s under its name", name, left, si.Config.Name, si.Config.Replicas, name)}
		}
		if hasPeer(si, name) {
			on = append(on, si.Config.Name)
		}
	}
	for _, stream := range on {
		if err := apiRequest(ctx, nc, "$JS.API.STREAM.PEER.REMOVE."+stream, map[string]string{"peer": name}); err != nil {
			return nil, fmt.Errorf("move stream %s off %s: %w", stream, name, err)
		}
	}
	sys, err := nats.Connect(e.url, nats.UserInfo(SystemUser, e.password), nats.Name("perch-server-remove"))
	if err != nil {
		return nil, fmt.Errorf("nats system account: %w", err)
	}
	defer sys.Close()
	if err := apiRequest(ctx, sys, "$JS.API.SERVER.REMOVE", map[string]string{"peer": name}); err != nil { // "peer": its name
		return nil, fmt.Errorf("remove %s from the JetStream cluster: %w", name, err)
	}
	// Until every stream is back at its replicas without name.
	for {
		pending, err := e.notPlaced(ctx, js, name)
		if err == nil && pending == "" {
			return on, nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = errors.New(pending)
			}
			return on, fmt.Errorf("%s is removed, but not every stream is back at its replicas yet (%w): watch perch server status", name, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// notPlaced says what is not yet in place after name's removal ("" when
// all is): name still in the meta group, or a stream short of replicas,
// with a replica on name or one not current.
func (e *Embedded) notPlaced(ctx context.Context, js jetstream.JetStream, name string) (string, error) {
	for _, p := range e.Meta().Peers {
		if p.Name == name {
			return name + " is still in the meta group", nil
		}
	}
	infos, err := streamInfos(ctx, js)
	if err != nil {
		return "", err
	}
	for _, si := range infos {
		c := si.Cluster
		if si.Config.Replicas <= 1 {
			continue
		}
		if c == nil || c.Leader == "" {
			return "stream " + si.Config.Name + " has no leader", nil
		}
		if hasPeer(si, name) || len(c.Replicas)+1 != si.Config.Replicas {
			return fmt.Sprintf("stream %s has %d of %d replicas", si.Config.Name, len(c.Replicas)+1, si.Config.Replicas), nil
		}
		for _, r := range c.Replicas {
			if !r.Current || r.Offline {
				return fmt.Sprintf("stream %s's replica on %s is catching up", si.Config.Name, r.Name), nil
			}
		}
	}
	return "", nil
}

func hasPeer(si *jetstream.StreamInfo, name string) bool {
	c := si.Cluster
	if c == nil {
		return false
	}
	if c.Leader == name {
		return true
	}
	for _, r := range c.Replicas {
		if r.Name == name {
			return true
		}
	}
	return false
}

func streamInfos(ctx context.Context, js jetstream.JetStream) ([]*jetstream.StreamInfo, error) {
	var out []*jetstream.StreamInfo
	l := js.ListStreams(ctx)
	for si := range l.Info() {
		out = append(out, si)
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	return out, nil
}

// apiRequest sends a JetStream API request and reads its answer's error,
// retrying while JetStream answers that it is busy or does not answer.
func apiRequest(ctx context.Context, nc *nats.Conn, subject string, req any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	for {
		err := apiRequestOnce(ctx, nc, subject, body)
		var je *jsAPIError
		retry := errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
			(errors.As(err, &je) && (je.Code == 503 || strings.Contains(je.Description, "in progress") || strings.Contains(je.Description, "inflight")))
		if err == nil || !retry {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

type jsAPIError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *jsAPIError) Error() string { return e.Description }

func apiRequestOnce(ctx context.Context, nc *nats.Conn, subject string, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, body)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nats.ErrTimeout
		}
		return err
	}
	var resp struct {
		Error   *jsAPIError `json:"error"`
		Success bool        `json:"success"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("answer to %s: %w", subject, err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	if !resp.Success {
		return fmt.Errorf("%s: not done (%s)", subject, msg.Data)
	}
	return nil
}
