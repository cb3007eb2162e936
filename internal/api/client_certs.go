package api

import (
	"context"
	"net/http"
	"net/url"
)

// AddCertificateRequest is the body of POST /v1/apps/{app}/certificates.
type AddCertificateRequest struct {
	Hostname string `json:"hostname"`
}

func certPath(app, hostname string) string {
	return appPath(app) + "/certificates/" + url.PathEscape(hostname)
}

// AddCertificate asks for a certificate for hostname and routes hostname to
// app. The answer is usually pending: poll GetCertificate until it is
// issued or failed. A hostname of another app is a 409 (IsConflict).
func (c *Client) AddCertificate(ctx context.Context, app, hostname string) (*Certificate, error) {
	var cert Certificate
	if err := c.do(ctx, http.MethodPost, appPath(app)+"/certificates", nil, AddCertificateRequest{Hostname: hostname}, &cert); err != nil {
		return nil, err
	}
	return &cert, nil
}

// ListCertificates lists app's certificates, its dev certificate included.
func (c *Client) ListCertificates(ctx context.Context, app string) ([]Certificate, error) {
	var certs []Certificate
	err := c.do(ctx, http.MethodGet, appPath(app)+"/certificates", nil, nil, &certs)
	return certs, err
}

// GetCertificate returns app's certificate for hostname.
func (c *Client) GetCertificate(ctx context.Context, app, hostname string) (*Certificate, error) {
	var cert Certificate
	if err := c.do(ctx, http.MethodGet, certPath(app, hostname), nil, nil, &cert); err != nil {
		return nil, err
	}
	return &cert, nil
}

// RemoveCertificate deletes app's certificate for hostname and stops
// routing hostname to app.
func (c *Client) RemoveCertificate(ctx context.Context, app, hostname string) error {
	return c.do(ctx, http.MethodDelete, certPath(app, hostname), nil, nil, nil)
}
