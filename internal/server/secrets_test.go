package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/mesh"
	"github.com/perchhq/perch/internal/secrets"
	"github.com/perchhq/perch/internal/store"
	"github.com/perchhq/perch/internal/store/storetest"
)

const secretValue = "s3cr3t-value-7f9c2d"

func TestSecretsEncryptedListedAndSealedToTheHost(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "shop"}); err != nil {
		t.Fatal(err)
	}
	hostKey, err := mesh.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096, MeshKey: hostKey.Public().String()}); err != nil {
		t.Fatal(err)
	}
	res, err := s.c.UpdateSecrets(ctx, "shop", map[string]*string{"DATABASE_URL": ptr(secretValue), "OTHER": ptr("x")})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 1 || len(res.Secrets) != 2 || res.Secrets[0].Name != "DATABASE_URL" || res.Secrets[0].Digest == "" {
		t.Fatalf("answer: %+v", res)
	}
	list, err := s.c.ListSecrets(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(list); bytes.Contains(b, []byte(secretValue)) {
		t.Fatalf("list shows the value: %s", b)
	}
	if where := storetest.Holds(t, s.st, []byte(secretValue)); where != "" {
		t.Fatalf("the value is in the store in the clear: %s", where)
	}
	if fi, err := os.Stat(filepath.Join(s.cfg.DataDir, secrets.KeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("master key file: %v, mode %v", err, fi.Mode())
	}

	// A machine's spec carries the values sealed to its host's key: that
	// host opens them, another does not.
	m, err := s.c.CreateMachine(ctx, "shop", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "x/y:1",
		Files: []api.File{{GuestPath: "/etc/db", SecretName: ptr("DATABASE_URL")}}}})
	if err != nil {
		t.Fatal(err)
	}
	spec, _, err := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("shop", m.ID))
	if err != nil {
		t.Fatal(err)
	}
	opened, err := hostKey.Open(spec.Secrets)
	if err != nil {
		t.Fatalf("the host cannot open its machine's secrets: %v", err)
	}
	var ss store.SealedSecrets
	if err := json.Unmarshal(opened, &ss); err != nil || ss.Values["DATABASE_URL"] != secretValue {
		t.Fatalf("opened %v, %v", ss.Values, err)
	}
	other, _ := mesh.LoadOrCreateKey(t.TempDir())
	if _, err := other.Open(spec.Secrets); err == nil {
		t.Fatal("another host's key opens the machine's secrets")
	}
	if where := storetest.Holds(t, s.st, []byte(secretValue)); where != "" {
		t.Fatalf("the value is in the store in the clear after a machine was made: %s", where)
	}

	// skip_secrets: a machine without them.
	m2, err := s.c.CreateMachine(ctx, "shop", api.CreateMachineRequest{Region: "iad", SkipSecrets: true, Config: api.MachineConfig{Image: "x/y:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if spec, _, _ := store.Get[store.MachineSpec](ctx, s.st.Machines, store.MachineKey("shop", m2.ID)); len(spec.Secrets) != 0 {
		t.Error("skip_secrets: the machine got the secrets")
	}

	// Unset removes it; a file naming a missing secret is refused.
	if _, err := s.c.UpdateSecrets(ctx, "shop", map[string]*string{"DATABASE_URL": nil}); err != nil {
		t.Fatal(err)
	}
	_, err = s.c.CreateMachine(ctx, "shop", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "x/y:1",
		Files: []api.File{{GuestPath: "/etc/db", SecretName: ptr("DATABASE_URL")}}}})
	wantStatus(t, err, 400, `secret_name "DATABASE_URL" is not a secret of app shop`)

	// A deleted app takes its secrets along: a new app of the name has none.
	// (An app without machines: this test has no agent to destroy them.)
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "blog"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.UpdateSecrets(ctx, "blog", map[string]*string{"K": ptr("v")}); err != nil {
		t.Fatal(err)
	}
	if err := s.c.DestroyApp(ctx, "blog"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Get[store.AppSecrets](ctx, s.st.Secrets, "blog"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the deleted app's secrets are still stored: %v", err)
	}
}

func TestSecretsBadInput(t *testing.T) {
	s := startServer(t, t.TempDir())
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "shop"}); err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("v", secrets.MaxValueBytes+1)
	_, err := s.c.UpdateSecrets(ctx, "shop", map[string]*string{"BIG": &big, "OK": ptr("fine")})
	wantStatus(t, err, 400, "at most 65536 bytes")
	for _, name := range []string{"1ABC", "A-B", "A B", "", "FLY_APP_NAME", "perch_x"} {
		_, err := s.c.UpdateSecrets(ctx, "shop", map[string]*string{name: ptr(secretValue)})
		wantStatus(t, err, 400, "name")
		if err != nil && strings.Contains(err.Error(), secretValue) {
			t.Errorf("error shows the value: %v", err)
		}
	}
	list, err := s.c.ListSecrets(ctx, "shop")
	if err != nil || len(list.Secrets) != 0 {
		t.Fatalf("refused changes wrote something: %+v %v", list, err)
	}
	for _, f := range []api.File{
		{GuestPath: "etc/x", RawValue: ptr("aGk=")},
		{GuestPath: "/proc/x", RawValue: ptr("aGk=")},
		{GuestPath: "/etc/x", RawValue: ptr("not base64!")},
		{GuestPath: "/etc/x"},
		{GuestPath: "/etc/x", RawValue: ptr("aGk="), Mode: 0o170000},
	} {
		_, err := s.c.CreateMachine(ctx, "shop", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "x/y:1", Files: []api.File{f}}})
		wantStatus(t, err, 400, "config.files[0]")
	}
	// A microVM machine takes files too (perch-init writes them).
	if _, err := s.c.RegisterHost(ctx, api.Host{Region: "iad", CPUs: 4, MemoryMB: 4096}); err != nil {
		t.Fatal(err)
	}
	m, err := s.c.CreateMachine(ctx, "shop", api.CreateMachineRequest{Region: "iad", Config: api.MachineConfig{Image: "x/y:1",
		Guest: api.Guest{Runtime: "microvm", MemoryMB: 256}, Files: []api.File{{GuestPath: "/etc/x", RawValue: ptr("aGk=")}}}})
	if err != nil || len(m.Config.Files) != 1 {
		t.Errorf("microVM machine with files: %v; want it created with its file", err)
	}
}

func TestSecretsSurviveMasterKeyRotation(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)
	ctx := context.Background()
	if _, err := s.c.CreateApp(ctx, api.CreateAppRequest{AppName: "shop"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.c.UpdateSecrets(ctx, "shop", map[string]*string{"DATABASE_URL": ptr(secretValue)}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, secrets.KeyFile))
	s.stop()

	// perch server --rotate-secrets-key
	s = startServer(t, dir, func(c *Config) { c.RotateSecretsKey = true })
	after, _ := os.ReadFile(filepath.Join(dir, secrets.KeyFile))
	if bytes.Equal(before, after) || len(after) == 0 {
		t.Fatal("the master key file did not change")
	}
	if _, err := os.Stat(filepath.Join(dir, secrets.NextKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the rotation left %s: %v", secrets.NextKeyFile, err)
	}
	vals, _, err := s.appSecretValues(ctx, "shop")
	if err != nil || vals["DATABASE_URL"] != secretValue {
		t.Fatalf("after rotation: %v, %v", vals, err)
	}
	rec, _, _ := store.Get[store.AppSecrets](ctx, s.st.Secrets, "shop")
	if rec.KeyID != s.keys.Current.ID {
		t.Fatalf("record wrapped by %s, current key %s", rec.KeyID, s.keys.Current.ID)
	}
	// The old key alone no longer opens the app's data key.
	old := strings.Fields(string(before))
	if rec.KeyID == old[0] {
		t.Fatal("record still names the old key")
	}

	// A rotation interrupted after the new key was written finishes at
	// the next start.
	if err := s.keys.BeginRotation(); err != nil {
		t.Fatal(err)
	}
	s.stop()
	s = startServer(t, dir)
	if vals, _, err := s.appSecretValues(ctx, "shop"); err != nil || vals["DATABASE_URL"] != secretValue {
		t.Fatalf("after an interrupted rotation: %v, %v", vals, err)
	}
	if _, err := os.Stat(filepath.Join(dir, secrets.NextKeyFile)); !os.IsNotExist(err) {
		t.Fatal("the interrupted rotation was not finished")
	}
}
