package registry

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// TestDiskLayoutImported: a registry directory of an earlier version
// (blobs in files, manifests in a journal) is moved into JetStream at the
// first start: its image is served, and the files are gone.
func TestDiskLayoutImported(t *testing.T) {
	dir := t.TempDir()
	img, _ := random.Image(8192, 2)
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(hex string, b []byte) {
		if err := os.WriteFile(filepath.Join(blobs, hex), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	layers, _ := img.Layers()
	for _, l := range layers {
		dg, _ := l.Digest()
		rc, _ := l.Compressed()
		b, _ := io.ReadAll(rc)
		write(dg.Hex, b)
	}
	cfgName, _ := img.ConfigName()
	cfg, _ := img.RawConfigFile()
	write(cfgName.Hex, cfg)
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	rec, _ := json.Marshal(record{Op: opPut, Name: "old/app", Reference: "v1", ContentType: string(mt), Body: raw})
	if err := os.MkdirAll(filepath.Join(dir, "manifests"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "manifests", "00000000000000000001.json"), rec, 0o600); err != nil {
		t.Fatal(err)
	}

	srv := startRegistry(t, dir)
	got, err := remote.Image(srv.ref(t, "old/app:v1"), withToken(testToken))
	if err != nil {
		t.Fatalf("pull the imported image: %v", err)
	}
	if err := validate.Image(got); err != nil {
		t.Errorf("the imported image: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs")); !os.IsNotExist(err) {
		t.Errorf("blobs/ is still there after the import: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "manifests.imported")); err != nil {
		t.Errorf("the journal was not set aside as manifests.imported: %v", err)
	}
	// A restart imports nothing twice.
	srv.Close()
	startRegistry(t, dir)
	if n := streamMsgs(t); n != 1 {
		t.Errorf("the manifest stream has %d records after the import and a restart, want 1", n)
	}
}
