package mesh

import (
	"crypto/rand"
	"errors"
	"fmt"

	"golang.org/x/crypto/nacl/box"
)

// A host's mesh key is an X25519 key, which is also a NaCl box key: the
// control plane seals a machine's secrets to the key of the host the
// machine is placed on (SealTo), and only that host opens them (Open).

// SealTo encrypts msg so that only the holder of pub's private key can
// read it (NaCl sealed box: an ephemeral key per message).
func SealTo(pub PublicKey, msg []byte) ([]byte, error) {
	k := [32]byte(pub)
	out, err := box.SealAnonymous(nil, msg, &k, rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mesh: seal: %w", err)
	}
	return out, nil
}

// ErrNotForThisKey is returned by Open for a box sealed to another key or
// altered on the way.
var ErrNotForThisKey = errors.New("sealed box is not for this host's key, or was altered")

// Open decrypts a box sealed to k's public key by SealTo.
func (k Key) Open(sealed []byte) ([]byte, error) {
	pub := [32]byte(k.Public())
	out, ok := box.OpenAnonymous(nil, sealed, &pub, &k.priv)
	if !ok {
		return nil, ErrNotForThisKey
	}
	return out, nil
}
