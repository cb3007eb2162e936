package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// Result is what one run of a check saw. Output is kept stable between
// runs that see the same thing (no timings, no ports of our side), so that
// an unchanged result is not written again.
type Result struct {
	OK     bool
	Output string
}

// maxBodyOutput is how much of a failing answer's body the output keeps.
const maxBodyOutput = 100

// Probe runs the check once against the machine at host (its private IP).
func (c *Check) Probe(ctx context.Context, host string) Result {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	addr := net.JoinHostPort(host, strconv.Itoa(c.Port))
	if c.Type == "tcp" {
		return c.probeTCP(ctx, addr)
	}
	return c.probeHTTP(ctx, addr)
}

func (c *Check) probeTCP(ctx context.Context, addr string) Result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return Result{Output: fmt.Sprintf("connect to %s: no connection within %s", addr, c.Timeout)}
		}
		return Result{Output: "connect to " + addr + ": " + cause(err)}
	}
	conn.Close()
	return Result{OK: true, Output: "connected to " + addr}
}

func (c *Check) probeHTTP(ctx context.Context, addr string) Result {
	scheme := "http"
	if c.HTTPS {
		scheme = "https"
	}
	what := c.Method + " " + c.Path
	req, err := http.NewRequestWithContext(ctx, c.Method, scheme+"://"+addr+c.Path, nil)
	if err != nil {
		return Result{Output: what + ": " + err.Error()}
	}
	for k, v := range c.Headers {
		req.Header[k] = v
	}
	if h := c.Headers.Get("Host"); h != "" {
		req.Host = h
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "perch-health-check")
	}
	res, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return Result{Output: fmt.Sprintf("%s: no answer within %s", what, c.Timeout)}
		}
		return Result{Output: what + ": " + cause(err)}
	}
	defer res.Body.Close()
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		// Drain a little so the server sees a clean end, not a reset.
		_, _ = io.CopyN(io.Discard, res.Body, 4096)
		return Result{OK: true, Output: what + ": " + res.Status}
	}
	out := what + ": " + res.Status
	body, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	if line := firstLine(body); line != "" {
		out += ": " + line
	}
	return Result{Output: out}
}

// newClient is a client that opens a new connection for every check (a
// kept-alive one would hide an app that stopped accepting), never goes
// through a proxy from the environment, and does not follow redirects.
func newClient(skipVerify bool) *http.Client {
	return &http.Client{
		// No Timeout: the probe's context bounds the whole request.
		Transport: &http.Transport{
			Proxy:             nil,
			DialContext:       (&net.Dialer{}).DialContext,
			DisableKeepAlives: true,
			// The user asked for it with tls_skip_verify.
			TLSClientConfig: &tls.Config{InsecureSkipVerify: skipVerify},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// cause is the part of a connect or request error that says what went
// wrong, without Go's "Get \"http://...\":" wrapping.
func cause(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// firstLine is the body's first line of printable text, shortened.
func firstLine(b []byte) string {
	s := string(b)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > maxBodyOutput {
		s = strings.ToValidUTF8(s[:maxBodyOutput], "") + "…"
	}
	return s
}
