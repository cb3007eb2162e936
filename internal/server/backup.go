package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/secrets"
	"github.com/perchhq/perch/internal/store"
)

// A backup (`perch server backup DIR`, docs/operations.md) is a
// directory: perch-backup.json (BackupManifest), streams/<name>/ with a
// JetStream snapshot of each stream, bucket and object store of the
// control plane, taken from a running server, and keys/ with the keys
// the state is sealed or signed with (the secrets master key, the token
// key), without which a restored state's secrets and organisation tokens
// are useless. `perch server restore DIR` puts it into a new server or
// cluster.

// BackupManifestFile names a backup's manifest.
const BackupManifestFile = "perch-backup.json"

// backupKeys are the data dir's files a backup carries: the keys that
// seal or sign part of the state. The NATS password and the admin token
// are the new server's own.
var backupKeys = []string{secrets.KeyFile, secrets.NextKeyFile, "token-key", "ui-key"}

// BackupManifest describes a backup.
type BackupManifest struct {
	Format  int                  `json:"format"`
	Created time.Time            `json:"created"`
	Server  string               `json:"server,omitempty"`
	Cluster string               `json:"cluster,omitempty"`
	Streams []store.StreamBackup `json:"streams"`
	Keys    []string             `json:"keys"`
}

// BackupOptions says where a backup comes from and goes to.
type BackupOptions struct {
	// DataDir is the running server's --data-dir: its NATS password and
	// keys are read there.
	DataDir string
	// NATSURL is the server's embedded NATS (nats://<--nats-listen>).
	NATSURL string
	// Dir is the backup's directory: new, or empty.
	Dir string
	Log *slog.Logger
}

// Backup snapshots every stream of a running server's (or cluster's)
// state into o.Dir, with the keys the state needs, without stopping it.
// Each stream's snapshot is of one moment; the streams are taken one
// after the other.
func Backup(ctx context.Context, o BackupOptions) (*BackupManifest, error) {
	if ents, err := os.ReadDir(o.Dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("backup: %s is not empty: give a new directory for each backup", o.Dir)
	}
	nc, err := connectLocal(o.DataDir, o.NATSURL)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer nc.Close()
	if err := os.MkdirAll(filepath.Join(o.Dir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	m := &BackupManifest{Format: 1, Created: time.Now().UTC(), Server: nc.ConnectedServerName(), Cluster: nc.ConnectedClusterName()}
	m.Streams, err = store.SnapshotStreams(ctx, nc, filepath.Join(o.Dir, "streams"))
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	for _, k := range backupKeys {
		b, err := os.ReadFile(filepath.Join(o.DataDir, k))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("backup: key %s: %w", k, err)
		}
		if err := os.WriteFile(filepath.Join(o.Dir, "keys", k), b, 0o600); err != nil {
			return nil, fmt.Errorf("backup: %w", err)
		}
		m.Keys = append(m.Keys, k)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	// Written last: a directory without it is no backup.
	if err := writeFileAtomic(filepath.Join(o.Dir, BackupManifestFile), append(b, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return m, nil
}

// RestoreOptions says what to restore into where.
type RestoreOptions struct {
	// DataDir is the target server's --data-dir (its NATS password; the
	// backup's keys are written there).
	DataDir string
	// NATSURL is the target server's embedded NATS.
	NATSURL string
	// Dir is the backup.
	Dir string
	// Force replaces a state that is not empty.
	Force bool
	Log   *slog.Logger
}

// ReadBackup reads and checks the backup in dir: its manifest, a
// complete snapshot of every stream it lists, its keys.
func ReadBackup(dir string) (*BackupManifest, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("no backup at %s: %w", dir, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a backup: it is a file; give the directory perch server backup made", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, BackupManifestFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s is not a Perch backup: it has no %s (perch server backup DIR makes one; a backup cut short has none)", dir, BackupManifestFile)
	}
	if err != nil {
		return nil, err
	}
	var m BackupManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, BackupManifestFile), err)
	}
	if m.Format != 1 {
		return nil, fmt.Errorf("%s: backup format %d, this perch reads format 1", dir, m.Format)
	}
	if len(m.Streams) == 0 {
		return nil, fmt.Errorf("%s: the backup lists no stream", dir)
	}
	for _, s := range m.Streams {
		if err := store.CheckSnapshot(filepath.Join(dir, "streams", s.Name), s.Name); err != nil {
			return nil, fmt.Errorf("%s: stream %s: %w", dir, s.Name, err)
		}
	}
	for _, k := range m.Keys {
		if _, err := os.Stat(filepath.Join(dir, "keys", k)); err != nil {
			return nil, fmt.Errorf("%s: key %s: %w", dir, k, err)
		}
	}
	return &m, nil
}

// Restore puts the backup o.Dir into the running server (or cluster)
// at o.NATSURL: every stream of the backup replaces the server's own, at
// the replicas its buckets have (one on a server alone, three in a
// cluster), and the backup's keys go into o.DataDir. The server must
// hold no apps, machines or hosts unless o.Force; a bad backup or a
// refused target changes nothing. The servers must be restarted after
// (they hold the state they started with in memory), in a cluster with
// the keys copied into every server's data dir.
func Restore(ctx context.Context, o RestoreOptions) (*BackupManifest, error) {
	m, err := ReadBackup(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	nc, err := connectLocal(o.DataDir, o.NATSURL)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	held, err := stateHeld(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if held != "" && !o.Force {
		return nil, fmt.Errorf("restore: the server already holds state (%s): restore into a new, empty server or cluster, or give --force to replace that state with the backup's", held)
	}
	replicas := 1
	if si, err := js.Stream(ctx, "KV_"+store.BucketApps); err == nil {
		replicas = si.CachedInfo().Config.Replicas
	}
	have, err := store.StreamNames(nc)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := store.DeleteStreams(nc, have); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	for _, s := range m.Streams {
		if _, err := store.RestoreStream(ctx, nc, filepath.Join(o.Dir, "streams", s.Name), s.Name, replicas); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if o.Log != nil {
			o.Log.Info("restored", "stream", s.Name, "messages", s.Messages)
		}
	}
	for _, k := range m.Keys {
		b, err := os.ReadFile(filepath.Join(o.Dir, "keys", k))
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(o.DataDir, k), b, 0o600); err != nil {
			return nil, fmt.Errorf("restore: key %s: %w", k, err)
		}
	}
	return m, nil
}

// stateHeld names what state the server holds ("" if none): its apps,
// machines and hosts (the control plane's own mesh records aside). A new
// server holds none (its admin token and default organisation are no
// state to keep).
func stateHeld(ctx context.Context, js jetstream.JetStream) (string, error) {
	var held []string
	for _, b := range []string{store.BucketApps, store.BucketMachines, store.BucketHosts} {
		kv, err := js.KeyValue(ctx, b)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("bucket %s: %w", b, err)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			return "", fmt.Errorf("bucket %s: %w", b, err)
		}
		n := 0
		for k := range keys.Keys() {
			if b == store.BucketHosts {
				e, err := kv.Get(ctx, k)
				var h api.Host
				if err == nil && json.Unmarshal(e.Value(), &h) == nil && h.Role == api.HostRoleControl {
					continue
				}
			}
			n++
		}
		if n > 0 {
			held = append(held, fmt.Sprintf("%d in %s", n, b))
		}
	}
	slices.Sort(held)
	return strings.Join(held, ", "), nil
}

// connectLocal connects to a server's embedded NATS as the control
// plane (store.ServerUser), its password read from dataDir.
func connectLocal(dataDir, url string) (*nats.Conn, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "nats-token"))
	if err != nil {
		return nil, fmt.Errorf("the server's NATS password: %w (give the server's --data-dir, and run this on the server)", err)
	}
	nc, err := nats.Connect(url, nats.UserInfo(store.ServerUser, strings.TrimSpace(string(b))), nats.Name("perch-backup"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to the server's NATS at %s: %w (is the server running? give its --nats-listen)", url, err)
	}
	return nc, nil
}
