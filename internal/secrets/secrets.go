// Package secrets is the cryptography and the rules of app secrets: names
// and sizes (Validate), the control plane's master key in its data dir
// (Keyring), and the envelope under it: a data key per app, wrapped by the
// master key, that encrypts the app's values (AES-256-GCM, each bound to
// its app and name). The server imports it; nothing here touches the store
// or logs. docs/secrets.md.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxValueBytes is the largest secret value, as on Fly (64 KiB).
const MaxValueBytes = 64 << 10

// nameRE is an environment variable name (POSIX: letters, digits and
// underscores, not starting with a digit), as Fly requires.
var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)

// ErrInvalid is wrapped by the errors of Validate.
var ErrInvalid = errors.New("invalid secret")

// Validate checks a secret's name and value size. Its errors never
// include the value.
func Validate(name string, value []byte) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q is not an environment variable name: use letters, digits and underscores (at most 256), not starting with a digit", ErrInvalid, truncate(name, 64))
	}
	for _, p := range []string{"FLY_", "PERCH_"} {
		if strings.HasPrefix(strings.ToUpper(name), p) {
			return fmt.Errorf("%w: name %s: names starting with %s are reserved for the platform's own variables; choose another name", ErrInvalid, name, p)
		}
	}
	if len(value) > MaxValueBytes {
		return fmt.Errorf("%w: %s is %d bytes; a secret holds at most %d bytes (64 KiB): keep larger data in a volume or the image", ErrInvalid, name, len(value), MaxValueBytes)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// NewKey returns a fresh 256-bit key.
func NewKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return k
}

// Seal encrypts plaintext with key (AES-256-GCM, random nonce first),
// bound to aad: a box moved to another app or name does not open.
func Seal(key []byte, aad string, plaintext []byte) ([]byte, error) {
	g, err := gcm(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("secrets: nonce: %w", err)
	}
	return g.Seal(nonce, nonce, plaintext, []byte(aad)), nil
}

// ErrDecrypt is returned when a box does not open with the key given.
var ErrDecrypt = errors.New("secrets: cannot decrypt: wrong key, or the data was altered")

// Open decrypts a box made by Seal with the same key and aad.
func Open(key []byte, aad string, box []byte) ([]byte, error) {
	g, err := gcm(key)
	if err != nil {
		return nil, err
	}
	if len(box) < g.NonceSize() {
		return nil, ErrDecrypt
	}
	out, err := g.Open(nil, box[:g.NonceSize()], box[g.NonceSize():], []byte(aad))
	if err != nil {
		return nil, ErrDecrypt
	}
	return out, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets: key: %w", err)
	}
	return cipher.NewGCM(b)
}

// DataKeyAAD binds an app's wrapped data key to the app.
func DataKeyAAD(app string) string { return "perch/data-key/" + app }

// ValueAAD binds a value to its app and name.
func ValueAAD(app, name string) string { return "perch/secret/" + app + "/" + name }

// Digest identifies a value without revealing it: an HMAC under the app's
// data key (a plain hash of a short secret could be guessed offline), so
// equal values show equal digests within one app only.
func Digest(dataKey []byte, name string, value []byte) string {
	m := hmac.New(sha256.New, dataKey)
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write(value)
	return hex.EncodeToString(m.Sum(nil)[:8])
}
