package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/nats-io/jsm.go"
	jsmapi "github.com/nats-io/jsm.go/api"
	"github.com/nats-io/nats.go"
)

// StreamBackup is one stream (a bucket, an object store, a stream) in a
// backup: its snapshot is in its own directory, named after it.
type StreamBackup struct {
	Name     string `json:"name"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
}

// SnapshotStreams writes a JetStream snapshot of every stream of the
// connection's account into dir/<stream> (jsm.go's SnapshotToDirectory:
// $JS.API.STREAM.SNAPSHOT, the stream's files as its leader has them),
// one stream after the other (names in reverse order), while the server
// runs and takes writes.
func SnapshotStreams(ctx context.Context, nc *nats.Conn, dir string) ([]StreamBackup, error) {
	mgr, names, err := streamNames(nc)
	if err != nil {
		return nil, err
	}
	// Referrers before what they refer to, so that a write between two
	// snapshots leaves no dangling reference in the backup: names in
	// reverse order take PERCH_REGISTRY (manifests) before
	// OBJ_perch_registry (their blobs), perch_machines before
	// perch_hosts and perch_apps.
	slices.Sort(names)
	slices.Reverse(names)
	var out []StreamBackup
	for _, name := range names {
		st, err := mgr.LoadStream(name)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		if _, err := st.SnapshotToDirectory(ctx, filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("snapshot of stream %s: %w", name, err)
		}
		state, err := st.LatestState()
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", name, err)
		}
		out = append(out, StreamBackup{Name: name, Messages: state.Msgs, Bytes: state.Bytes})
	}
	return out, nil
}

// CheckSnapshot reports whether dir holds a complete snapshot of stream
// (its archive and its finished meta file, naming it).
func CheckSnapshot(dir, stream string) error {
	if _, err := jsm.SnapshotDataPath(dir); err != nil {
		return fmt.Errorf("no snapshot archive: %w", err)
	}
	_, err := snapshotConfig(dir, stream)
	return err
}

func snapshotConfig(dir, stream string) (jsmapi.StreamConfig, error) {
	b, err := os.ReadFile(filepath.Join(dir, jsm.SnapshotMetaFile))
	if err != nil {
		return jsmapi.StreamConfig{}, fmt.Errorf("no snapshot meta file: %w", err)
	}
	var req jsmapi.JSApiStreamRestoreRequest
	if err := json.Unmarshal(b, &req); err != nil {
		return jsmapi.StreamConfig{}, fmt.Errorf("snapshot meta file %s: %w", filepath.Join(dir, jsm.SnapshotMetaFile), err)
	}
	if req.Config.Name != stream {
		return jsmapi.StreamConfig{}, fmt.Errorf("snapshot in %s is of stream %q, not %q", dir, req.Config.Name, stream)
	}
	return req.Config, nil
}

// StreamNames are the streams of the connection's account.
func StreamNames(nc *nats.Conn) ([]string, error) {
	_, names, err := streamNames(nc)
	return names, err
}

// streamNames is StreamNames with the manager it asked.
func streamNames(nc *nats.Conn) (*jsm.Manager, []string, error) {
	mgr, err := jsm.New(nc)
	if err != nil {
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	names, err := mgr.StreamNames(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("list streams: %w", err)
	}
	return mgr, names, nil
}

// DeleteStreams deletes the named streams of the connection's account
// (one missing is no error).
func DeleteStreams(nc *nats.Conn, names []string) error {
	mgr, err := jsm.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	for _, name := range names {
		if err := mgr.DeleteStream(name); err != nil && !jsm.IsNatsError(err, 10059) { // stream not found
			return fmt.Errorf("delete stream %s: %w", name, err)
		}
	}
	return nil
}

// RestoreStream restores stream from its snapshot in dir
// ($JS.API.STREAM.RESTORE, then the archive in chunks to the subject the
// answer names): at replicas copies, placed anywhere in the cluster (the
// snapshot's placement is dropped: a backup of one cluster restores into
// another). The stream must not exist. It is jsm.go's restore but for a
// chunk met by no responders, sent again: in a cluster the server that
// restores may not yet have its subscription known across the routes
// when its answer arrives.
func RestoreStream(ctx context.Context, nc *nats.Conn, dir, stream string, replicas int) (uint64, error) {
	cfg, err := snapshotConfig(dir, stream)
	if err != nil {
		return 0, err
	}
	meta, err := os.ReadFile(filepath.Join(dir, jsm.SnapshotMetaFile))
	if err != nil {
		return 0, err
	}
	var req jsmapi.JSApiStreamRestoreRequest
	if err := json.Unmarshal(meta, &req); err != nil {
		return 0, err
	}
	cfg.Replicas = max(replicas, 1)
	cfg.Placement = nil
	req.Config = cfg
	dataPath, err := jsm.SnapshotDataPath(dir)
	if err != nil {
		return 0, err
	}
	data, err := os.Open(dataPath)
	if err != nil {
		return 0, err
	}
	defer data.Close()
	body, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.RESTORE."+stream, body)
	if err != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, err)
	}
	var resp struct {
		Error          *jsAPIError `json:"error"`
		DeliverSubject string      `json:"deliver_subject"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, err)
	}
	if resp.Error != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, resp.Error)
	}
	chunk := make([]byte, min(64<<10, nc.MaxPayload()))
	send := func(b []byte, timeout time.Duration) (*nats.Msg, error) {
		for tries := 0; ; tries++ {
			m, err := nc.Request(resp.DeliverSubject, b, timeout)
			if !errors.Is(err, nats.ErrNoResponders) || tries >= 50 || ctx.Err() != nil {
				return m, err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for {
		n, err := io.ReadFull(data, chunk)
		if n > 0 {
			m, serr := send(chunk[:n], 10*time.Second)
			if serr != nil {
				return 0, fmt.Errorf("restore stream %s: send the archive: %w", stream, serr)
			}
			var r struct {
				Error *jsAPIError `json:"error"`
			}
			if len(m.Data) > 0 && json.Unmarshal(m.Data, &r) == nil && r.Error != nil {
				return 0, fmt.Errorf("restore stream %s: %w", stream, r.Error)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("restore stream %s: %w", stream, err)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	// The end: the server restores the stream and answers as a create.
	m, err := send(nil, 10*time.Minute)
	if err != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, err)
	}
	var done struct {
		Error *jsAPIError `json:"error"`
		State struct {
			Msgs uint64 `json:"messages"`
		} `json:"state"`
	}
	if err := json.Unmarshal(m.Data, &done); err != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, err)
	}
	if done.Error != nil {
		return 0, fmt.Errorf("restore stream %s: %w", stream, done.Error)
	}
	return done.State.Msgs, nil
}
