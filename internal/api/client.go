package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Client speaks the control plane's REST API. It is thin on purpose: one
// method per endpoint, server errors returned as *HTTPError.
type Client struct {
	baseURL string
	// urls are the servers of baseURL (several, comma-separated, for a
	// cluster); cur the one that answered last.
	urls  []string
	cur   atomic.Int32
	token string
	// HTTP is the client requests go through. It has no overall timeout
	// because log streams and waits are long; callers bound calls with ctx.
	HTTP *http.Client
}

// NewClient returns a client for the API at baseURL (e.g.
// "http://127.0.0.1:4280") that authenticates with token. baseURL may
// name several servers of a cluster, comma-separated: a request goes to
// the one that answered last, and to the next when it cannot connect
// (any request), or when the connection fails afterwards (a GET, which
// is safe to send twice).
func NewClient(baseURL, token string) *Client {
	var urls []string
	for u := range strings.SplitSeq(baseURL, ",") {
		if u = strings.TrimRight(strings.TrimSpace(u), "/"); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		urls = []string{""}
	}
	return &Client{
		baseURL: strings.Join(urls, ","),
		urls:    urls,
		token:   token,
		HTTP:    &http.Client{},
	}
}

// BaseURL is the API URL the client talks to.
func (c *Client) BaseURL() string { return c.baseURL }

// HTTPError is an error response of the API.
type HTTPError struct {
	StatusCode int
	// Message is the server's "error" field, or the body or status text when
	// the response was not the API's JSON.
	Message string
	// RetryAfter is the answer's Retry-After (seconds form), 0 if none.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// IsNotFound reports whether err is a 404 from the API.
func IsNotFound(err error) bool { return hasStatus(err, http.StatusNotFound) }

// IsConflict reports whether err is a 409 from the API: a name taken, or a
// machine that failed while being waited for.
func IsConflict(err error) bool { return hasStatus(err, http.StatusConflict) }

// IsUnauthorized reports whether err is a 401 from the API.
func IsUnauthorized(err error) bool { return hasStatus(err, http.StatusUnauthorized) }

// IsTimeout reports whether err is a 408 from the API (a wait timed out).
func IsTimeout(err error) bool { return hasStatus(err, http.StatusRequestTimeout) }

func hasStatus(err error, code int) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.StatusCode == code
}

// unreachableError says which API could not be reached and what to check,
// because "connection refused" alone does not tell a user what to do.
type unreachableError struct {
	url string
	err error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the Perch API at %s (connection refused): check the URL with `perch auth login` and that `perch server` is running", e.url)
}

func (e *unreachableError) Unwrap() error { return e.err }

// do sends a request and decodes a JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	resp, err := c.send(ctx, method, path, query, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return nil
}

// send sends a request and returns the response when its status is 2xx; the
// caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, query url.Values, in any) (*http.Response, error) {
	var b []byte
	if in != nil {
		var err error
		if b, err = json.Marshal(in); err != nil {
			return nil, fmt.Errorf("%s %s: encoding request: %w", method, path, err)
		}
	}
	for waited := time.Duration(0); ; {
		resp, err := c.sendRound(ctx, method, path, query, in != nil, b)
		// A read answered 503 with a Retry-After (a clustered control
		// plane electing a new leader after a server died) is asked
		// again, for at most readRetryFor: the user sees the answer a
		// few seconds late rather than an error. Writes are not: a
		// write may have been stored before its answer was lost.
		var he *HTTPError
		if err == nil || (method != http.MethodGet && method != http.MethodHead) ||
			!errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable || he.RetryAfter <= 0 ||
			waited+he.RetryAfter > readRetryFor {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(he.RetryAfter):
		}
		waited += he.RetryAfter
	}
}

// readRetryFor bounds how long send asks again after 503s with a
// Retry-After: a cluster's election takes a few seconds.
var readRetryFor = 15 * time.Second

// sendRound sends a request to each server in turn, from the last one
// that answered, until one answers or the failure is not one another
// server could fix (retryable).
func (c *Client) sendRound(ctx context.Context, method, path string, query url.Values, hasBody bool, b []byte) (*http.Response, error) {
	first := int(c.cur.Load())
	for i := range len(c.urls) {
		n := (first + i) % len(c.urls)
		resp, err := c.sendTo(ctx, c.urls[n], method, path, query, hasBody, b)
		if err == nil || i == len(c.urls)-1 || ctx.Err() != nil || !retryable(method, err) {
			if err == nil {
				c.cur.Store(int32(n))
			}
			return resp, err
		}
	}
	panic("unreachable")
}

// retryable says whether a request that failed with err may go to
// another server: one never sent (no connection), or a GET.
func retryable(method string, err error) bool {
	var he *HTTPError
	if errors.As(err, &he) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return method == http.MethodGet || method == http.MethodHead
}

func (c *Client) sendTo(ctx context.Context, base, method, path string, query url.Values, hasBody bool, b []byte) (*http.Response, error) {
	u := base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if hasBody {
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if hasBody {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, &unreachableError{url: base, err: err}
		}
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e Error
	msg := ""
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		msg = e.Error
	} else if s := strings.TrimSpace(string(b)); s != "" {
		msg = s
	} else {
		msg = http.StatusText(resp.StatusCode)
	}
	he := &HTTPError{StatusCode: resp.StatusCode, Message: msg}
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && n > 0 {
		he.RetryAfter = time.Duration(n) * time.Second
	}
	return he
}

func appPath(app string) string { return "/v1/apps/" + url.PathEscape(app) }

func machinePath(app, id string) string {
	return appPath(app) + "/machines/" + url.PathEscape(id)
}

// CreateApp creates an app; a taken name is a 409 (IsConflict).
func (c *Client) CreateApp(ctx context.Context, req CreateAppRequest) (*App, error) {
	var app App
	if err := c.do(ctx, http.MethodPost, "/v1/apps", nil, req, &app); err != nil {
		return nil, err
	}
	return &app, nil
}

// ListApps lists all apps.
func (c *Client) ListApps(ctx context.Context) ([]App, error) {
	var list AppList
	err := c.do(ctx, http.MethodGet, "/v1/apps", nil, nil, &list)
	return list.Apps, err
}

// GetApp returns one app.
func (c *Client) GetApp(ctx context.Context, app string) (*App, error) {
	var a App
	if err := c.do(ctx, http.MethodGet, appPath(app), nil, nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// DestroyApp destroys an app and all its machines.
func (c *Client) DestroyApp(ctx context.Context, app string) error {
	return c.do(ctx, http.MethodDelete, appPath(app), nil, nil, nil)
}

// ListHosts lists the hosts that registered.
func (c *Client) ListHosts(ctx context.Context) ([]Host, error) {
	var hosts []Host
	err := c.do(ctx, http.MethodGet, "/v1/hosts", nil, nil, &hosts)
	return hosts, err
}

// RemoveHost removes host id (operator only): its credential revoked, its
// NATS connections closed, its record gone; its machines are lost.
func (c *Client) RemoveHost(ctx context.Context, id string) (*RemovedHost, error) {
	var out RemovedHost
	if err := c.do(ctx, http.MethodDelete, "/v1/hosts/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RegisterHost registers (or re-registers, when h.ID is set) an agent's
// host and returns it with its ID and subnet.
func (c *Client) RegisterHost(ctx context.Context, h Host) (*Host, error) {
	var out Host
	if err := c.do(ctx, http.MethodPost, "/v1/hosts", nil, h, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Heartbeat reports host id alive with what it measured; the control
// plane writes it into the host's record.
func (c *Client) Heartbeat(ctx context.Context, id string, hb HostHeartbeat) error {
	return c.do(ctx, http.MethodPost, "/v1/hosts/"+url.PathEscape(id)+"/heartbeat", nil, hb, nil)
}

// CreateJoinToken makes a single-use join token for one host of a region.
func (c *Client) CreateJoinToken(ctx context.Context, req JoinTokenRequest) (*JoinToken, error) {
	var out JoinToken
	if err := c.do(ctx, http.MethodPost, "/v1/hosts/join-tokens", nil, req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// JoinHost spends the client's token, a join token, for a host credential.
func (c *Client) JoinHost(ctx context.Context) (*HostCredential, error) {
	var out HostCredential
	if err := c.do(ctx, http.MethodPost, "/v1/hosts/join", nil, struct{}{}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Bootstrap tells an agent how to reach the state store and registry.
func (c *Client) Bootstrap(ctx context.Context) (*AgentBootstrap, error) {
	var b AgentBootstrap
	if err := c.do(ctx, http.MethodGet, "/v1/agent/bootstrap", nil, nil, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// Region is one region as GET /v1/regions lists it.
type Region struct {
	Code  string `json:"code"`
	Name  string `json:"name"`
	Hosts int    `json:"hosts"`
	// Draining: perch regions drain took its anycast routes away.
	Draining bool `json:"draining,omitempty"`
}

// RegionDrain is the answer of POST /v1/regions/{region}/drain and
// .../undrain.
type RegionDrain struct {
	Region   string    `json:"region"`
	Draining bool      `json:"draining"`
	Since    time.Time `json:"since,omitzero"`
}

// DrainRegion withdraws region's anycast announcements (admin): its
// hosts keep serving what still arrives.
func (c *Client) DrainRegion(ctx context.Context, region string) (RegionDrain, error) {
	var d RegionDrain
	err := c.do(ctx, http.MethodPost, "/v1/regions/"+url.PathEscape(region)+"/drain", nil, nil, &d)
	return d, err
}

// UndrainRegion has region's hosts announce again.
func (c *Client) UndrainRegion(ctx context.Context, region string) (RegionDrain, error) {
	var d RegionDrain
	err := c.do(ctx, http.MethodPost, "/v1/regions/"+url.PathEscape(region)+"/undrain", nil, nil, &d)
	return d, err
}

// ListRegions lists the regions the control plane knows.
func (c *Client) ListRegions(ctx context.Context) ([]Region, error) {
	var regions []Region
	err := c.do(ctx, http.MethodGet, "/v1/regions", nil, nil, &regions)
	return regions, err
}
