package api

import (
	"context"
	"net/http"
	"strconv"
)

func releasePath(app string, version int) string {
	return appPath(app) + "/releases/" + strconv.Itoa(version)
}

// ListReleases lists app's releases, newest first.
func (c *Client) ListReleases(ctx context.Context, app string) ([]Release, error) {
	var rs []Release
	err := c.do(ctx, http.MethodGet, appPath(app)+"/releases", nil, nil, &rs)
	return rs, err
}

// CreateRelease records a new release of app; the server gives it the
// next version.
func (c *Client) CreateRelease(ctx context.Context, app string, req CreateReleaseRequest) (*Release, error) {
	var r Release
	if err := c.do(ctx, http.MethodPost, appPath(app)+"/releases", nil, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// GetRelease returns one release of app.
func (c *Client) GetRelease(ctx context.Context, app string, version int) (*Release, error) {
	var r Release
	if err := c.do(ctx, http.MethodGet, releasePath(app, version), nil, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// UpdateRelease sets a release's status (and the image digest its
// machines run).
func (c *Client) UpdateRelease(ctx context.Context, app string, version int, req UpdateReleaseRequest) (*Release, error) {
	var r Release
	if err := c.do(ctx, http.MethodPatch, releasePath(app, version), nil, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}
