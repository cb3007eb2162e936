package secrets

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// KeyFile is the master key's file in the control plane's data dir (mode
// 0600): "<id> <hex key>". NextKeyFile holds the new key while a rotation
// is under way; a control plane that finds it finishes the rotation.
const (
	KeyFile     = "secrets-master-key"
	NextKeyFile = "secrets-master-key.next"
)

// MasterKey is a key that wraps apps' data keys; ID names it in the
// records it wrapped.
type MasterKey struct {
	ID  string
	Key []byte
}

// Keyring is the master keys a control plane holds: Current, and during
// a rotation Next.
type Keyring struct {
	dir     string
	Current MasterKey
	Next    *MasterKey
}

// LoadKeyring reads the master key from dir, creating it at first start.
func LoadKeyring(dir string) (*Keyring, error) {
	k := &Keyring{dir: dir}
	cur, err := readKey(filepath.Join(dir, KeyFile))
	if errors.Is(err, os.ErrNotExist) {
		cur = newMasterKey()
		err = writeKey(filepath.Join(dir, KeyFile), cur)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: master key: %w", err)
	}
	k.Current = cur
	next, err := readKey(filepath.Join(dir, NextKeyFile))
	switch {
	case err == nil:
		k.Next = &next
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("secrets: next master key: %w", err)
	}
	return k, nil
}

// Get is the master key of that id.
func (k *Keyring) Get(id string) (MasterKey, bool) {
	if k.Next != nil && k.Next.ID == id {
		return *k.Next, true
	}
	if k.Current.ID == id {
		return k.Current, true
	}
	return MasterKey{}, false
}

// Wrapping is the key new data keys are wrapped with: Next during a
// rotation, else Current.
func (k *Keyring) Wrapping() MasterKey {
	if k.Next != nil {
		return *k.Next
	}
	return k.Current
}

// BeginRotation makes a new key Next (written to NextKeyFile first, so
// a crash leaves both keys on disk), unless a rotation is under way.
func (k *Keyring) BeginRotation() error {
	if k.Next != nil {
		return nil
	}
	next := newMasterKey()
	if err := writeKey(filepath.Join(k.dir, NextKeyFile), next); err != nil {
		return fmt.Errorf("secrets: write next master key: %w", err)
	}
	k.Next = &next
	return nil
}

// FinishRotation makes Next the current key; call it once no record is
// wrapped by the old one. The old key is gone from the disk after it.
func (k *Keyring) FinishRotation() error {
	if k.Next == nil {
		return nil
	}
	if err := os.Rename(filepath.Join(k.dir, NextKeyFile), filepath.Join(k.dir, KeyFile)); err != nil {
		return fmt.Errorf("secrets: install next master key: %w", err)
	}
	k.Current, k.Next = *k.Next, nil
	return nil
}

func newMasterKey() MasterKey {
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	return MasterKey{ID: hex.EncodeToString(id), Key: NewKey()}
}

func readKey(path string) (MasterKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return MasterKey{}, err
	}
	id, hx, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	key, herr := hex.DecodeString(hx)
	if !ok || herr != nil || len(key) != 32 || id == "" {
		return MasterKey{}, fmt.Errorf("%s is not a master key (\"<id> <64 hex digits>\"); restore it from a backup: without it no secret can be read", path)
	}
	return MasterKey{ID: id, Key: key}, nil
}

func writeKey(path string, k MasterKey) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-key-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(k.ID + " " + hex.EncodeToString(k.Key) + "\n"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
