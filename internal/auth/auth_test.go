package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"gopkg.in/macaroon.v2"
)

func testAuthority(t *testing.T) *Authority {
	t.Helper()
	a, err := NewAuthority([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAttenuateOffline: a holder narrows a token without the key; the
// server sees every caveat, and the narrowed token verifies.
func TestAttenuateOffline(t *testing.T) {
	a := testAuthority(t)
	root, err := a.Mint("t1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(root, Prefix) {
		t.Fatalf("token %q lacks the prefix %q", root, Prefix)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	narrow, err := Attenuate(root, AppCaveat("web"), ReadOnlyCaveat, ExpiresCaveat(exp), RegionCaveat("ams"))
	if err != nil {
		t.Fatal(err)
	}
	id, r, err := a.Verify(narrow, time.Now())
	if err != nil {
		t.Fatalf("narrowed token refused: %v", err)
	}
	if id != "t1" || !r.ReadOnly || !r.AllowsApp("web") || r.AllowsApp("db") || !r.Expires.Equal(exp) || r.AllowsRegion("iad") || !r.AllowsRegion("ams") {
		t.Fatalf("verified id %q restrictions %+v; want t1, web, readonly, ams, %s", id, r, exp)
	}
	// Two app caveats intersect: no app is allowed.
	both, _ := Attenuate(narrow, AppCaveat("db"))
	if _, r, err := a.Verify(both, time.Now()); err != nil || r.AllowsApp("web") || r.AllowsApp("db") {
		t.Fatalf("app=web,app=db: %v %+v; want neither app", err, r)
	}
	if _, _, err := a.Verify(narrow, exp.Add(time.Second)); !errors.Is(err, ErrExpired) {
		t.Fatalf("after expiry: %v; want ErrExpired", err)
	}
}

// TestVerifyRefuses: another key, an unknown caveat, a removed caveat and a
// damaged token are refused.
func TestVerifyRefuses(t *testing.T) {
	a := testAuthority(t)
	root, _ := a.Mint("t1", ReadOnlyCaveat)
	other, _ := NewAuthority([]byte(strings.Repeat("x", 32)))
	if _, _, err := other.Verify(root, time.Now()); !errors.Is(err, ErrSignature) {
		t.Errorf("another server's key: %v; want ErrSignature", err)
	}
	if _, err := Attenuate(root, "admin=true"); err == nil {
		t.Errorf("Attenuate accepted an unknown caveat")
	}
	// An unknown caveat added with the library directly is refused by Verify.
	m, _ := decode(root)
	m.AddFirstPartyCaveat([]byte("admin=true"))
	bad, _ := encode(m)
	if _, _, err := a.Verify(bad, time.Now()); err == nil || !strings.Contains(err.Error(), "not one Perch knows") {
		t.Errorf("unknown caveat: %v; want refused", err)
	}
	// Dropping the readonly caveat (re-encoding without it) breaks the signature.
	m, _ = decode(root)
	stripped, _ := macaroon.New([]byte("guess"), m.Id(), location, macaroon.V2)
	stripped.Bind(m.Signature())
	s, _ := encode(stripped)
	if _, _, err := a.Verify(s, time.Now()); !errors.Is(err, ErrSignature) {
		t.Errorf("caveat stripped: %v; want ErrSignature", err)
	}
	flipped := []byte(root)
	flipped[len(flipped)-3] ^= 1
	if _, _, err := a.Verify(string(flipped), time.Now()); err == nil {
		t.Errorf("a flipped character verified")
	}
	if _, _, err := a.Verify("perch_deadbeef", time.Now()); !errors.Is(err, ErrMalformed) {
		t.Errorf("not a macaroon: %v; want ErrMalformed", err)
	}
}
