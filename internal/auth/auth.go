// Package auth is Perch's API tokens: who a request acts for (a Principal)
// and the attenuable tokens organisations hold.
//
// An organisation's token is a macaroon (gopkg.in/macaroon.v2) written as
// "perch_m1_" + base64url of its binary form. Its id names a record the
// server keeps (TokenRecord: organisation, kind, name, expiry); its root key
// is derived from the server's signing key and that id, so the store never
// holds a secret that can mint a token. A holder narrows a token offline by
// adding first-party caveats (Attenuate): app=NAME, readonly,
// expires=RFC3339, region=CODE. The server checks the signature chain and
// every caveat; a caveat it does not know refuses the token. Deleting the
// record revokes the token and every token narrowed from it at once.
//
// The package touches neither the store nor HTTP: the server resolves a
// request to a Principal and asks it what it may do.
package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/macaroon.v2"
)

// Prefix starts every macaroon token, so that a token found in a log or a
// repository is recognisable as Perch's and as which format.
const Prefix = "perch_m1_"

// location is the macaroons' location field.
const location = "perch"

// Kind is what a principal is.
type Kind string

const (
	// KindAdmin is the operator: every route, every organisation.
	KindAdmin Kind = "admin"
	// KindOrg acts within one organisation, perhaps narrowed further.
	KindOrg Kind = "org"
	// KindHost is a host's agent (host credentials; minted elsewhere).
	KindHost Kind = "host"
)

// Token kinds of TokenRecord.Kind: what the root token was made for.
const (
	TokenOrg      = "org"      // the whole organisation
	TokenMember   = "member"   // a member's own token (perch orgs invite)
	TokenDeploy   = "deploy"   // one app (a root app= caveat)
	TokenReadOnly = "readonly" // reads only (a root readonly caveat)
)

// Principal is who a request acts for, with what its token allows.
type Principal struct {
	Kind Kind
	// Org is the organisation of a KindOrg principal.
	Org string
	// TokenID is the root token's id ("" for the admin token).
	TokenID string
	// Name says who, for records (a release's user, a lease's owner).
	Name string
	// Host is a KindHost principal's host id.
	Host string
	Restrictions
}

// Restrictions are what a token's caveats narrow it to. The zero value
// narrows nothing.
type Restrictions struct {
	// Apps: every entry must name the app (caveats intersect, so two
	// different apps allow none).
	Apps []string
	// ReadOnly allows only GET and HEAD.
	ReadOnly bool
	// Expires is the earliest expiry caveat; zero means none.
	Expires time.Time
	// Regions: every entry must name the machine's region.
	Regions []string
}

// AllowsApp reports whether the restrictions let the holder reach app.
func (r Restrictions) AllowsApp(app string) bool {
	for _, a := range r.Apps {
		if a != app {
			return false
		}
	}
	return true
}

// AllowsRegion reports whether the restrictions let the holder act on a
// machine in region.
func (r Restrictions) AllowsRegion(region string) bool {
	for _, c := range r.Regions {
		if c != region {
			return false
		}
	}
	return true
}

// AppBound reports whether the token reaches only some apps.
func (r Restrictions) AppBound() bool { return len(r.Apps) > 0 }

// Caveats lists the restrictions as caveats, for display.
func (r Restrictions) Caveats() []string {
	var out []string
	for _, a := range r.Apps {
		out = append(out, AppCaveat(a))
	}
	if r.ReadOnly {
		out = append(out, ReadOnlyCaveat)
	}
	if !r.Expires.IsZero() {
		out = append(out, ExpiresCaveat(r.Expires))
	}
	for _, c := range r.Regions {
		out = append(out, RegionCaveat(c))
	}
	return out
}

// TokenRecord is what the server keeps of a root token (KV perch_tokens,
// key RecordKey(id)). It holds no secret.
type TokenRecord struct {
	ID        string    `json:"id"`
	Org       string    `json:"org"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name,omitempty"`
	Member    string    `json:"member,omitempty"`
	App       string    `json:"app,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// RecordKey is a token record's key in perch_tokens.
func RecordKey(id string) string { return "mac." + id }

// Errors a token is refused with; all mean 401.
var (
	ErrMalformed = errors.New("the token is not a Perch token (perch_m1_...) or is damaged")
	ErrSignature = errors.New("the token's signature does not verify: it was altered or is not from this server")
	ErrExpired   = errors.New("the token has expired")
)

// Caveat forms.
const ReadOnlyCaveat = "readonly"

// AppCaveat narrows a token to one app.
func AppCaveat(app string) string { return "app=" + app }

// RegionCaveat narrows a token to machines of one region.
func RegionCaveat(region string) string { return "region=" + region }

// ExpiresCaveat makes a token expire at t.
func ExpiresCaveat(t time.Time) string { return "expires=" + t.UTC().Format(time.RFC3339) }

var (
	nameRE   = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	regionRE = regexp.MustCompile(`^[a-z0-9]{2,8}$`)
)

// ParseCaveat adds one caveat to r, or says why it is not one Perch knows.
func ParseCaveat(c string, r *Restrictions) error {
	k, v, _ := strings.Cut(c, "=")
	switch {
	case c == ReadOnlyCaveat:
		r.ReadOnly = true
	case k == "app" && nameRE.MatchString(v):
		if !slices.Contains(r.Apps, v) {
			r.Apps = append(r.Apps, v)
		}
	case k == "region" && regionRE.MatchString(v):
		if !slices.Contains(r.Regions, v) {
			r.Regions = append(r.Regions, v)
		}
	case k == "expires":
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return fmt.Errorf("caveat %q: the time is not RFC 3339 (e.g. 2026-01-02T15:04:05Z)", c)
		}
		if r.Expires.IsZero() || t.Before(r.Expires) {
			r.Expires = t
		}
	default:
		return fmt.Errorf("caveat %q is not one Perch knows (app=NAME, readonly, expires=RFC3339, region=CODE)", c)
	}
	return nil
}

// Authority mints and verifies tokens with the server's signing key.
type Authority struct{ key []byte }

// NewAuthority returns an Authority over key (at least 32 bytes).
func NewAuthority(key []byte) (*Authority, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("auth: signing key has %d bytes; it needs at least 32", len(key))
	}
	return &Authority{key: slices.Clone(key)}, nil
}

func (a *Authority) rootKey(id string) []byte {
	h := hmac.New(sha256.New, a.key)
	h.Write([]byte("perch token v1\x00" + id))
	return h.Sum(nil)
}

// Mint makes the root token of record id with the given caveats (a deploy
// token's app=, a read-only token's readonly, an expiry).
func (a *Authority) Mint(id string, caveats ...string) (string, error) {
	m, err := macaroon.New(a.rootKey(id), []byte(id), location, macaroon.V2)
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	for _, c := range caveats {
		if err := ParseCaveat(c, &Restrictions{}); err != nil {
			return "", fmt.Errorf("auth: mint: %w", err)
		}
		if err := m.AddFirstPartyCaveat([]byte(c)); err != nil {
			return "", fmt.Errorf("auth: mint: %w", err)
		}
	}
	return encode(m)
}

// IsMacaroon reports whether tok has the macaroon token's prefix.
func IsMacaroon(tok string) bool { return strings.HasPrefix(tok, Prefix) }

func decode(tok string) (*macaroon.Macaroon, error) {
	b64, ok := strings.CutPrefix(tok, Prefix)
	if !ok {
		return nil, ErrMalformed
	}
	b, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return nil, ErrMalformed
	}
	var m macaroon.Macaroon
	if err := m.UnmarshalBinary(b); err != nil {
		return nil, ErrMalformed
	}
	return &m, nil
}

func encode(m *macaroon.Macaroon) (string, error) {
	b, err := m.MarshalBinary()
	if err != nil {
		return "", fmt.Errorf("auth: encode token: %w", err)
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// ID is the root token id tok claims, unverified: what to look its record
// up by before Verify.
func ID(tok string) (string, error) {
	m, err := decode(tok)
	if err != nil {
		return "", err
	}
	return string(m.Id()), nil
}

// Inspect reads tok's id and caveats without verifying it (the holder's
// view: perch tokens attenuate shows what a token is narrowed to).
func Inspect(tok string) (id string, r Restrictions, err error) {
	m, err := decode(tok)
	if err != nil {
		return "", r, err
	}
	for _, c := range m.Caveats() {
		if len(c.VerificationId) > 0 {
			return "", r, fmt.Errorf("auth: the token has a third-party caveat, which Perch does not use")
		}
		if err := ParseCaveat(string(c.Id), &r); err != nil {
			return "", r, err
		}
	}
	return string(m.Id()), r, nil
}

// Attenuate narrows tok by adding caveats, offline: no server and no key
// are needed, and the result can do no more than tok.
func Attenuate(tok string, caveats ...string) (string, error) {
	m, err := decode(tok)
	if err != nil {
		return "", err
	}
	if len(caveats) == 0 {
		return "", errors.New("auth: no caveat given; narrow the token with app=NAME, readonly, expires=RFC3339 or region=CODE")
	}
	for _, c := range caveats {
		if err := ParseCaveat(c, &Restrictions{}); err != nil {
			return "", err
		}
		if err := m.AddFirstPartyCaveat([]byte(c)); err != nil {
			return "", fmt.Errorf("auth: attenuate: %w", err)
		}
	}
	return encode(m)
}

// Verify checks tok's signature chain and every caveat at now, and returns
// its root id and restrictions. A token past an expires caveat is
// ErrExpired; an unknown caveat refuses the token.
func (a *Authority) Verify(tok string, now time.Time) (string, Restrictions, error) {
	var r Restrictions
	m, err := decode(tok)
	if err != nil {
		return "", r, err
	}
	id := string(m.Id())
	conds, err := m.VerifySignature(a.rootKey(id), nil)
	if err != nil {
		return "", r, ErrSignature
	}
	for _, c := range conds {
		if err := ParseCaveat(c, &r); err != nil {
			return "", r, fmt.Errorf("auth: token refused: %w", err)
		}
	}
	if !r.Expires.IsZero() && !now.Before(r.Expires) {
		return "", r, fmt.Errorf("%w (at %s)", ErrExpired, r.Expires.Format(time.RFC3339))
	}
	return id, r, nil
}
