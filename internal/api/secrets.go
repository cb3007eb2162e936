package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// File is a file written into a machine's root filesystem before it
// starts, as Fly's machine config shapes it: the content is RawValue
// (base64) or the value of the app's secret SecretName. Mode is the
// file's permission bits (0644 when 0).
type File struct {
	GuestPath  string  `json:"guest_path"`
	RawValue   *string `json:"raw_value,omitempty"`
	SecretName *string `json:"secret_name,omitempty"`
	Mode       uint32  `json:"mode,omitempty"`
}

// AppSecret is one secret as the API lists it: never its value.
type AppSecret struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// AppSecrets answers GET and POST /v1/apps/{app}/secrets: the app's
// secrets by name, and the secrets version (grows with every change).
type AppSecrets struct {
	Secrets []AppSecret `json:"secrets"`
	Version int64       `json:"version"`
}

// UpdateSecretsRequest is POST /v1/apps/{app}/secrets, Fly's shape: a
// value sets a secret, null unsets it, in one change.
type UpdateSecretsRequest struct {
	Values map[string]*string `json:"values"`
}

// SetSecretRequest is POST /v1/apps/{app}/secrets/{name}.
type SetSecretRequest struct {
	Value string `json:"value"`
}

func secretsPath(app string) string { return appPath(app) + "/secrets" }

// ListSecrets lists app's secrets (names, digests, times).
func (c *Client) ListSecrets(ctx context.Context, app string) (*AppSecrets, error) {
	var out AppSecrets
	if err := c.do(ctx, http.MethodGet, secretsPath(app), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateSecrets sets (a value) and unsets (nil) app's secrets in one
// change.
func (c *Client) UpdateSecrets(ctx context.Context, app string, values map[string]*string) (*AppSecrets, error) {
	var out AppSecrets
	if err := c.do(ctx, http.MethodPost, secretsPath(app), nil, UpdateSecretsRequest{Values: values}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UnsetSecret removes one secret of app.
func (c *Client) UnsetSecret(ctx context.Context, app, name string) error {
	return c.do(ctx, http.MethodDelete, secretsPath(app)+"/"+url.PathEscape(name), nil, nil, nil)
}
