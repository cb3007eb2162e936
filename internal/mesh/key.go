package mesh

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// KeyFile is the private key's file name inside a host's state directory.
const KeyFile = "mesh.key"

// PublicKey is a host's WireGuard public key, the only half that leaves it.
// Its text form is standard base64, as `wg` prints it.
type PublicKey [32]byte

// String is the base64 form.
func (k PublicKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText makes the key base64 in JSON.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads the base64 form.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ParsePublicKey reads a base64 public key.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("mesh: public key %q: want 32 bytes of base64", s)
	}
	copy(k[:], b)
	return k, nil
}

func (k PublicKey) hex() string { return hex.EncodeToString(k[:]) }

// Key is a host's private key. It has no text form on purpose: String
// prints the public key, so logging a Key cannot leak it.
type Key struct{ priv [32]byte }

// GenerateKey makes a new Curve25519 private key, clamped as WireGuard
// expects.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k.priv[:]); err != nil {
		return k, fmt.Errorf("mesh: generate key: %w", err)
	}
	k.priv[0] &= 248
	k.priv[31] = (k.priv[31] & 127) | 64
	return k, nil
}

// Public is the key's public half.
func (k Key) Public() PublicKey {
	var p PublicKey
	pub, err := curve25519.X25519(k.priv[:], curve25519.Basepoint)
	if err != nil {
		// Only a low-order point fails, which the base point is not.
		panic("mesh: curve25519: " + err.Error())
	}
	copy(p[:], pub)
	return p
}

// String is the public key, never the private one.
func (k Key) String() string { return "mesh.Key(public " + k.Public().String() + ")" }

func (k Key) isZero() bool { return k.priv == [32]byte{} }

// LoadOrCreateKey reads dir/mesh.key, or generates a key and writes it
// there with mode 0600, so a host keeps its identity across restarts.
func LoadOrCreateKey(dir string) (Key, error) {
	path := filepath.Join(dir, KeyFile)
	b, err := os.ReadFile(path)
	if err == nil {
		var k Key
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(raw) != len(k.priv) {
			return k, fmt.Errorf("mesh: %s is not a base64 32-byte key; remove it to make a new one (peers must then learn the new public key)", path)
		}
		copy(k.priv[:], raw)
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return Key{}, fmt.Errorf("mesh: read key: %w", err)
	}
	k, err := GenerateKey()
	if err != nil {
		return k, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Key{}, fmt.Errorf("mesh: key dir: %w", err)
	}
	// O_EXCL: two processes racing on one state dir must not both win.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateKey(dir)
		}
		return Key{}, fmt.Errorf("mesh: write key: %w", err)
	}
	_, err = f.WriteString(base64.StdEncoding.EncodeToString(k.priv[:]) + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return Key{}, fmt.Errorf("mesh: write key: %w", err)
	}
	return k, nil
}
