// Package heroku moves a Heroku "Cedar" app to Perch unchanged (Turboku):
// a client of the Heroku Platform API (client.go: the app, its latest
// release and slug, config vars, formation, as Heroku documents them:
// version 3 media type, Range/Next-Range paging, rate limits), the slug's
// download with its checksum checked (slug.go), the OCI image made of the
// stack's base image, the slug's ./app at /app and a launcher that starts
// a dyno as Heroku does (image.go, launcher.go), and the app's mapping to
// a perch.toml (plan.go). The CLI imports it; it imports config and api
// for the mapping, and go-containerregistry. herokutest is a stand-in
// Platform API for tests.
package heroku

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultAPI is the Heroku Platform API's base URL.
const DefaultAPI = "https://api.heroku.com"

// Accept is the media type of version 3 of the Platform API, which every
// request must name (Heroku refuses requests without a version).
const Accept = "application/vnd.heroku+json; version=3"

// Client reads apps from the Platform API with a token (an API key or an
// OAuth token: `heroku auth:token`).
type Client struct {
	Base  string // DefaultAPI when empty
	Token string
	HTTP  *http.Client // http.DefaultClient when nil
	Log   *slog.Logger // nil: silent
	// MaxWait bounds one wait on a 429's Retry-After (default 60 s); a
	// longer one fails with the RateLimitError.
	MaxWait time.Duration
	// Sleep waits (tests pass a recorder); nil: a timer honouring ctx.
	Sleep func(ctx context.Context, d time.Duration) error
	// Remaining is the last RateLimit-Remaining Heroku sent (-1: none yet).
	Remaining int
}

// NewClient is a client of the API at base ("" for DefaultAPI).
func NewClient(base, token string) *Client {
	return &Client{Base: base, Token: token, Remaining: -1}
}

// App is the app resource, with the fields Perch uses.
type App struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Region struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	} `json:"region"`
	Stack      NamedRef  `json:"stack"`
	BuildStack NamedRef  `json:"build_stack"`
	Generation *NamedRef `json:"generation"` // "cedar" or "fir"; absent before Fir
	WebURL     string    `json:"web_url"`
}

// NamedRef is Heroku's {id, name} identity of a related resource.
type NamedRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Release is the release resource.
type Release struct {
	ID          string `json:"id"`
	Version     int    `json:"version"`
	Description string `json:"description"`
	Status      string `json:"status"` // "succeeded", "pending", "failed"
	Current     bool   `json:"current"`
	Slug        *struct {
		ID string `json:"id"`
	} `json:"slug"` // null: a release without a slug (config only before a first build, or Fir)
	OCIImage *struct {
		ID string `json:"id"`
	} `json:"oci_image"` // Fir apps' releases
	CreatedAt time.Time `json:"created_at"`
}

// Slug is the slug resource.
type Slug struct {
	ID   string `json:"id"`
	Blob struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"blob"`
	Checksum     *string           `json:"checksum"` // "SHA256:<hex>", or null
	Commit       *string           `json:"commit"`
	ProcessTypes map[string]string `json:"process_types"`
	Size         *int64            `json:"size"`
	Stack        NamedRef          `json:"stack"`
}

// Formation is one process type's entry in the formation.
type Formation struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Command  string `json:"command"`
	Quantity int    `json:"quantity"`
	Size     string `json:"size"`
}

// APIError is an error response of the Platform API: its status and the
// {"id", "message"} body Heroku sends.
type APIError struct {
	Status  int
	ID      string `json:"id"`
	Message string `json:"message"`
	Path    string
}

func (e *APIError) Error() string {
	var hint string
	switch e.Status {
	case http.StatusUnauthorized:
		hint = "; the Heroku token was refused: pass a valid one with --heroku-token or HEROKU_API_KEY (`heroku auth:token` prints yours)"
	case http.StatusForbidden:
		hint = "; the Heroku token may not read this app: use a token of an account that is a collaborator of the app (or its team), with read access"
	case http.StatusNotFound:
		hint = "; check the app's name (`heroku apps`)"
	}
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("heroku API %s: %d %s (%s)%s", e.Path, e.Status, msg, e.ID, hint)
}

// RateLimitError is a 429 whose Retry-After was longer than the client
// waits, or a rate limit that stayed exhausted.
type RateLimitError struct {
	RetryAfter time.Duration
	Path       string
}

func (e *RateLimitError) Error() string {
	return fmt.Sprintf("heroku API %s: rate limit reached (429); Heroku asks to retry after %s: try again then (the limit is 4,500 requests an hour per account)", e.Path, e.RetryAfter)
}

// IsStatus reports whether err is an APIError with the status.
func IsStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == status
}

func (c *Client) base() string {
	if c.Base == "" {
		return DefaultAPI
	}
	return strings.TrimRight(c.Base, "/")
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP == nil {
		return http.DefaultClient
	}
	return c.HTTP
}

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if c.Sleep != nil {
		return c.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// maxRetries bounds the 429s one request waits out.
const maxRetries = 5

// do sends a GET of path with rng as its Range header ("" for none) and
// returns the response, having waited out 429s (Retry-After) and slowed
// down when RateLimit-Remaining runs low.
func (c *Client) do(ctx context.Context, path, rng string) (*http.Response, error) {
	maxWait := c.MaxWait
	if maxWait == 0 {
		maxWait = time.Minute
	}
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base()+path, nil)
		if err != nil {
			return nil, fmt.Errorf("heroku API %s: %w", path, err)
		}
		req.Header.Set("Accept", Accept)
		req.Header.Set("User-Agent", "perch-turboku")
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := c.httpClient().Do(req)
		if err != nil {
			return nil, fmt.Errorf("heroku API %s: %w", path, err)
		}
		if v := resp.Header.Get("RateLimit-Remaining"); v != "" {
			if n, err := strconv.Atoi(v); err == nil {
				c.Remaining = n
			}
		}
		if resp.StatusCode == http.StatusTooManyRequests {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			wait := retryAfter(resp.Header.Get("Retry-After"))
			if wait > maxWait || attempt >= maxRetries {
				return nil, &RateLimitError{RetryAfter: wait, Path: path}
			}
			if c.Log != nil {
				c.Log.Info("heroku rate limit: waiting as Retry-After asks", "path", path, "wait", wait)
			}
			if err := c.sleep(ctx, wait); err != nil {
				return nil, err
			}
			continue
		}
		if resp.StatusCode >= 400 {
			defer resp.Body.Close()
			ae := &APIError{Status: resp.StatusCode, Path: path}
			_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(ae)
			return nil, ae
		}
		// Out of tokens but not refused yet: the next request would be.
		// Heroku refills about 75 a minute; wait for one.
		if c.Remaining == 0 {
			if err := c.sleep(ctx, time.Second); err != nil {
				resp.Body.Close()
				return nil, err
			}
		}
		return resp, nil
	}
}

// retryAfter reads Retry-After: seconds or an HTTP date; 1 s when absent.
func retryAfter(v string) time.Duration {
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d.Round(time.Second)
		}
		return 0
	}
	return time.Second
}

// get decodes one resource.
func (c *Client) get(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, path, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("heroku API %s: decoding the answer: %w", path, err)
	}
	return nil
}

// list pages through a list with Range and Next-Range: Heroku answers 206
// Partial Content and a Next-Range header while more remain. each gets
// every page's items; it returns false to stop.
func list[T any](ctx context.Context, c *Client, path, rng string, each func([]T) bool) error {
	for pages := 0; ; pages++ {
		if pages > 1000 {
			return fmt.Errorf("heroku API %s: more than 1,000 pages; giving up", path)
		}
		resp, err := c.do(ctx, path, rng)
		if err != nil {
			return err
		}
		var items []T
		err = json.NewDecoder(resp.Body).Decode(&items)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("heroku API %s: decoding the answer: %w", path, err)
		}
		if !each(items) {
			return nil
		}
		next := resp.Header.Get("Next-Range")
		if resp.StatusCode != http.StatusPartialContent || next == "" {
			return nil
		}
		rng = next
	}
}

func appPath(app string) string { return "/apps/" + url.PathEscape(app) }

// App reads the app by name or id.
func (c *Client) App(ctx context.Context, app string) (*App, error) {
	var a App
	if err := c.get(ctx, appPath(app), &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// PageSize is the Range max the client asks lists for.
var PageSize = 200

// LatestRelease is the app's newest succeeded release: releases listed by
// version, newest first.
func (c *Client) LatestRelease(ctx context.Context, app string) (*Release, error) {
	var found *Release
	err := list(ctx, c, appPath(app)+"/releases", fmt.Sprintf("version ..; order=desc, max=%d", PageSize), func(rs []Release) bool {
		for i := range rs {
			if rs[i].Status == "" || rs[i].Status == "succeeded" {
				found = &rs[i]
				return false
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("heroku app %s has no succeeded release: deploy it on Heroku first (git push heroku main)", app)
	}
	return found, nil
}

// Slug reads a slug of the app.
func (c *Client) Slug(ctx context.Context, app, id string) (*Slug, error) {
	var s Slug
	if err := c.get(ctx, appPath(app)+"/slugs/"+url.PathEscape(id), &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// ConfigVars are the app's config vars.
func (c *Client) ConfigVars(ctx context.Context, app string) (map[string]string, error) {
	var raw map[string]*string
	if err := c.get(ctx, appPath(app)+"/config-vars", &raw); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range raw {
		if v != nil {
			out[k] = *v
		}
	}
	return out, nil
}

// Formation is every process type of the app's formation, following
// Next-Range.
func (c *Client) Formation(ctx context.Context, app string) ([]Formation, error) {
	var out []Formation
	err := list(ctx, c, appPath(app)+"/formation", fmt.Sprintf("type ..; max=%d", PageSize), func(fs []Formation) bool {
		out = append(out, fs...)
		return true
	})
	return out, err
}
