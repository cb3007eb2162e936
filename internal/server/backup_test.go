package server

import (
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/store"
)

// TestRestoreFromCopy follows docs/operations.md's backup of a single
// server: a copy of its stopped --data-dir, put back later, brings back
// the apps and machines of the copy (and not those made after it).
func TestRestoreFromCopy(t *testing.T) {
	dir, backup := t.TempDir(), filepath.Join(t.TempDir(), "copy")
	ctx := context.Background()
	s := startServer(t, dir)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "kept"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 2, MemoryMB: 1024})
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:1"}})
	if err != nil {
		t.Fatal(err)
	}
	s.stop()
	copyDir(t, dir, backup)

	s = startServer(t, dir)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "later"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.RegisterHost(ctx, api.Host{ID: h.ID, Region: "iad", CPUs: 2, MemoryMB: 1024}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:2"}}); err != nil {
		t.Fatal(err)
	}
	s.stop()

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	copyDir(t, backup, dir)
	s = startServer(t, dir)
	got, err := s.c.GetMachine(ctx, "kept", m.ID)
	if err != nil || got.PrivateIP != m.PrivateIP || got.HostID != h.ID {
		t.Errorf("machine of the copy after the restore: %+v, %v; want %s on %s", got, err, m.ID, h.ID)
	}
	if ms, err := s.c.ListMachines(ctx, "kept", ""); err != nil || len(ms) != 1 {
		t.Errorf("machines after the restore: %d, %v; want the copy's one", len(ms), err)
	}
	if _, err := s.c.GetApp(ctx, "later"); err == nil {
		t.Errorf("app made after the copy is there after the restore")
	}
	apps, err := s.c.ListApps(ctx)
	if err != nil || len(apps) != 1 || apps[0].Name != "kept" {
		t.Errorf("apps after the restore: %+v, %v; want kept alone", apps, err)
	}
}

// copyDir copies the tree src to dst, modes kept.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), info.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// backupState is the state TestBackupAndRestore writes and reads back.
type backupState struct {
	hostKey  mesh.Key
	hostID   string
	machine  string
	orgToken string
	image    string // digest of kept:v1
}

// writeBackupState writes apps, a host, a machine, a secret, an
// organisation token and a pushed image through s's API.
func writeBackupState(t *testing.T, s *testServer) backupState {
	t.Helper()
	ctx := context.Background()
	var st backupState
	var err error
	if st.hostKey, err = mesh.LoadOrCreateKey(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "kept"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096, MeshKey: st.hostKey.Public().String()})
	if err != nil {
		t.Fatal(err)
	}
	st.hostID = h.ID
	if _, err := s.c.UpdateSecrets(ctx, "kept", map[string]*string{"DATABASE_URL": ptr(secretValue)}); err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:1"}})
	if err != nil {
		t.Fatal(err)
	}
	st.machine = m.ID
	tok, err := s.c.CreateToken(ctx, DefaultOrg, api.CreateTokenRequest{Kind: "org", Name: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	st.orgToken = tok.Secret
	img, _ := random.Image(256<<10, 2)
	if err := remote.Write(mustRef(t, strings.TrimPrefix(s.URL(), "http://")+"/kept:v1"), img, remote.WithAuth(&authn.Basic{Username: "x", Password: s.AdminToken()})); err != nil {
		t.Fatalf("push: %v", err)
	}
	dg, _ := img.Digest()
	st.image = dg.String()
	return st
}

// checkBackupState reads the state of writeBackupState back through s's
// API: the app, host and machine, the secret sealed to the host in a new
// machine (the master key came back), the organisation token (the token
// key came back), the image; and not the app "later".
func checkBackupState(t *testing.T, s *testServer, st backupState) {
	t.Helper()
	// Bounded: a stuck server fails the test rather than hangs it.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := s.c.GetApp(ctx, "kept"); err != nil {
		t.Errorf("app kept: %v", err)
	}
	if _, err := s.c.GetApp(ctx, "later"); err == nil {
		t.Errorf("app later, made after the backup, is there")
	}
	if m, err := s.c.GetMachine(ctx, "kept", st.machine); err != nil || m.HostID != st.hostID {
		t.Errorf("machine %s: %+v, %v; want it on %s", st.machine, m, err, st.hostID)
	}
	hosts, err := s.c.ListHosts(ctx)
	if err != nil || !slices.ContainsFunc(hosts, func(h api.Host) bool { return h.ID == st.hostID }) {
		t.Errorf("hosts %+v, %v; want %s", hosts, err, st.hostID)
	}
	m, err := s.c.CreateMachine(ctx, "kept", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "r/kept:1",
		Files: []api.File{{GuestPath: "/etc/db", SecretName: ptr("DATABASE_URL")}}}})
	if err != nil {
		t.Fatalf("a machine with the secret after the restore: %v", err)
	}
	var spec store.MachineSpec
	// In a cluster a read may be answered by a replica a moment behind.
	waitUntil(t, 10*time.Second, "the new machine's spec", func() string {
		if spec, _, err = store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("kept", m.ID)); err != nil {
			return err.Error()
		}
		return ""
	})
	opened, err := st.hostKey.Open(spec.Secrets)
	var ss store.SealedSecrets
	if err != nil || json.Unmarshal(opened, &ss) != nil || ss.Values["DATABASE_URL"] != secretValue {
		t.Errorf("the secret after the restore: %v %v", ss.Values, err)
	}
	if w, err := api.NewClient(s.URL(), st.orgToken).Whoami(ctx); err != nil || w.Org != DefaultOrg {
		t.Errorf("the organisation token after the restore: %+v, %v", w, err)
	}
	img, err := remote.Image(mustRef(t, strings.TrimPrefix(s.URL(), "http://")+"/kept:v1"), remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: "x", Password: s.AdminToken()}))
	if err != nil {
		t.Errorf("pull kept:v1 after the restore: %v", err)
	} else if dg, _ := img.Digest(); dg.String() != st.image {
		t.Errorf("kept:v1 is %s, want %s", dg, st.image)
	} else if err := validate.Image(img); err != nil {
		t.Errorf("kept:v1 after the restore: %v", err)
	}
}

// TestBackupAndRestore: a backup taken from a running server (which goes
// on taking writes) is restored into a new server and into a new cluster
// of three; restarted, each answers the backup's state through the API.
// A missing directory, one that is no backup, and a server holding state
// (without Force) are refused, and change nothing.
func TestBackupAndRestore(t *testing.T) {
	ctx := context.Background()
	dir, bdir := t.TempDir(), filepath.Join(t.TempDir(), "backup")
	s := startServer(t, dir)
	st := writeBackupState(t, s)
	start := time.Now()
	m, err := Backup(ctx, BackupOptions{DataDir: dir, NATSURL: s.natsURL, Dir: bdir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup of a running server: %d streams in %s", len(m.Streams), time.Since(start).Round(time.Millisecond))
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "later"}); err != nil {
		t.Fatal(err)
	}
	if _, err := Backup(ctx, BackupOptions{DataDir: dir, NATSURL: s.natsURL, Dir: bdir}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("a backup into a used directory: %v, want refused", err)
	}

	// Refusals.
	notBackup := t.TempDir()
	if err := os.WriteFile(filepath.Join(notBackup, "notes.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, want string }{
		{filepath.Join(t.TempDir(), "missing"), "no backup at"},
		{notBackup, "is not a Perch backup"},
	} {
		if _, err := Restore(ctx, RestoreOptions{DataDir: dir, NATSURL: s.natsURL, Dir: c.dir}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("restore from %s: %v, want %q", c.dir, err, c.want)
		}
	}
	if _, err := Restore(ctx, RestoreOptions{DataDir: dir, NATSURL: s.natsURL, Dir: bdir}); err == nil || !strings.Contains(err.Error(), "already holds state") {
		t.Errorf("restore into a server with state: %v, want refused", err)
	}
	if _, err := s.c.GetApp(ctx, "later"); err != nil {
		t.Errorf("the refused restores changed the server: app later: %v", err)
	}

	t.Run("single", func(t *testing.T) {
		fdir := t.TempDir()
		f := startServer(t, fdir)
		start := time.Now()
		if _, err := Restore(ctx, RestoreOptions{DataDir: fdir, NATSURL: f.natsURL, Dir: bdir}); err != nil {
			t.Fatal(err)
		}
		t.Logf("restore into a new server: %s", time.Since(start).Round(time.Millisecond))
		f.stop()
		checkBackupState(t, startServer(t, fdir), st)
	})

	t.Run("force", func(t *testing.T) {
		// The server with state, its app "later" made after the backup.
		if _, err := Restore(ctx, RestoreOptions{DataDir: dir, NATSURL: s.natsURL, Dir: bdir, Force: true}); err != nil {
			t.Fatal(err)
		}
		s.stop()
		checkBackupState(t, startServer(t, dir), st)
	})

	t.Run("cluster", func(t *testing.T) {
		c := newTestCluster(t, "restored")
		three := []string{"s1", "s2", "s3"}
		dirs := map[string]string{}
		for _, n := range three {
			dirs[n] = c.dataDir()
		}
		start := time.Now()
		srv := c.start(three, three, dirs)
		t.Logf("a new cluster started in %s", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		m, err := Restore(ctx, RestoreOptions{DataDir: dirs["s2"], NATSURL: srv["s2"].natsURL, Dir: bdir})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("restore into a new cluster: %s", time.Since(start).Round(time.Millisecond))
		for _, k := range m.Keys { // docs/operations.md: the keys into every server's data dir
			b, err := os.ReadFile(filepath.Join(dirs["s2"], k))
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{"s1", "s3"} {
				if err := os.WriteFile(filepath.Join(dirs[n], k), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, s := range srv {
			s.stop()
		}
		start = time.Now()
		srv = c.start(three, three, dirs)
		t.Logf("restarted in %s", time.Since(start).Round(time.Millisecond))
		waitUntil(t, 60*time.Second, "the restored cluster at three replicas", func() string {
			st, err := srv["s1"].c.ClusterStatus(ctx)
			if err != nil {
				return err.Error()
			}
			if srv[st.MetaLeader] == nil {
				return "meta leader " + st.MetaLeader
			}
			if st, err = srv[st.MetaLeader].c.ClusterStatus(ctx); err != nil {
				return err.Error()
			}
			return settled(st, three...)
		})
		t.Logf("restarted and settled in %s", time.Since(start).Round(time.Millisecond))
		checkBackupState(t, srv["s3"], st)
	})
}
