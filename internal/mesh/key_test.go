package mesh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKeyPersistedPrivately(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	k1, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Public() != k2.Public() {
		t.Fatal("second load made a new key; a restarted host would lose its identity")
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	raw, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	priv := strings.TrimSpace(string(raw))

	// What leaves the host: the Peer record and any log line of the key.
	out, _ := json.Marshal(Peer{PublicKey: k1.Public()})
	for _, s := range []string{string(out), k1.String(), k1.Public().String()} {
		if strings.Contains(s, priv) {
			t.Fatalf("private key leaks in %q", s)
		}
	}
	var back Peer
	if err := json.Unmarshal(out, &back); err != nil || back.PublicKey != k1.Public() {
		t.Fatalf("public key does not round-trip through JSON: %v", err)
	}
}

func TestCorruptKeyFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("nope"), 0o600)
	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("want an error saying what to do, got %v", err)
	}
}
