package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Org is an organisation: apps, tokens and members live in one.
type Org struct {
	Slug      string      `json:"slug"`
	Name      string      `json:"name"`
	Members   []OrgMember `json:"members"`
	CreatedAt time.Time   `json:"created_at"`
}

// OrgMember is a member of an organisation, by e-mail address or name.
type OrgMember struct {
	Name    string    `json:"name"`
	AddedAt time.Time `json:"added_at"`
}

// CreateOrgRequest is POST /v1/orgs (the operator's).
type CreateOrgRequest struct {
	Slug string `json:"slug"`
	Name string `json:"name,omitempty"`
}

// InviteRequest is POST /v1/orgs/{org}/members: the member is added and a
// token is made for them.
type InviteRequest struct {
	Member string `json:"member"`
	// ExpiresIn is the member token's lifetime in seconds; 0 means none.
	ExpiresIn int64 `json:"expires_in,omitempty"`
}

// Token is what the server keeps of an organisation's root token; the
// secret itself is shown once, at creation.
type Token struct {
	ID        string    `json:"id"`
	Org       string    `json:"org"`
	Kind      string    `json:"kind"` // org, member, deploy, readonly
	Name      string    `json:"name,omitempty"`
	Member    string    `json:"member,omitempty"`
	App       string    `json:"app,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// CreateTokenRequest is POST /v1/orgs/{org}/tokens.
type CreateTokenRequest struct {
	Kind string `json:"kind"` // org, deploy (with App), readonly
	App  string `json:"app,omitempty"`
	Name string `json:"name,omitempty"`
	// ExpiresIn is the token's lifetime in seconds; 0 means none.
	ExpiresIn int64 `json:"expires_in,omitempty"`
}

// NewToken is a created token: its record and the secret, shown once.
type NewToken struct {
	Token
	Secret string `json:"token"`
}

// Whoami is what GET /v1/whoami says of the caller's token.
type Whoami struct {
	Kind    string   `json:"kind"` // admin, org, host
	Org     string   `json:"org,omitempty"`
	TokenID string   `json:"token_id,omitempty"`
	Name    string   `json:"name,omitempty"`
	Caveats []string `json:"caveats,omitempty"`
}

func orgPath(org string) string { return "/v1/orgs/" + url.PathEscape(org) }

// Whoami says who the client's token acts for.
func (c *Client) Whoami(ctx context.Context) (*Whoami, error) {
	var w Whoami
	return &w, c.do(ctx, http.MethodGet, "/v1/whoami", nil, nil, &w)
}

// CreateOrg creates an organisation (admin token).
func (c *Client) CreateOrg(ctx context.Context, req CreateOrgRequest) (*Org, error) {
	var o Org
	return &o, c.do(ctx, http.MethodPost, "/v1/orgs", nil, req, &o)
}

// ListOrgs lists the organisations the token sees (all for the admin).
func (c *Client) ListOrgs(ctx context.Context) ([]Org, error) {
	var out []Org
	return out, c.do(ctx, http.MethodGet, "/v1/orgs", nil, nil, &out)
}

// InviteMember adds a member and returns the token made for them.
func (c *Client) InviteMember(ctx context.Context, org string, req InviteRequest) (*NewToken, error) {
	var t NewToken
	return &t, c.do(ctx, http.MethodPost, orgPath(org)+"/members", nil, req, &t)
}

// RemoveMember removes a member and revokes their tokens.
func (c *Client) RemoveMember(ctx context.Context, org, member string) error {
	return c.do(ctx, http.MethodDelete, orgPath(org)+"/members/"+url.PathEscape(member), nil, nil, nil)
}

// CreateToken makes a root token of org.
func (c *Client) CreateToken(ctx context.Context, org string, req CreateTokenRequest) (*NewToken, error) {
	var t NewToken
	return &t, c.do(ctx, http.MethodPost, orgPath(org)+"/tokens", nil, req, &t)
}

// ListTokens lists org's root tokens (never their secrets).
func (c *Client) ListTokens(ctx context.Context, org string) ([]Token, error) {
	var out []Token
	return out, c.do(ctx, http.MethodGet, orgPath(org)+"/tokens", nil, nil, &out)
}

// RevokeToken revokes a root token and every token narrowed from it.
func (c *Client) RevokeToken(ctx context.Context, org, id string) error {
	return c.do(ctx, http.MethodDelete, orgPath(org)+"/tokens/"+url.PathEscape(id), nil, nil, nil)
}
