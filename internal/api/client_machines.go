package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ListMachines lists an app's machines, only region's when region is set.
func (c *Client) ListMachines(ctx context.Context, app, region string) ([]Machine, error) {
	var q url.Values
	if region != "" {
		q = url.Values{"region": {region}}
	}
	var ms []Machine
	err := c.do(ctx, http.MethodGet, appPath(app)+"/machines", q, nil, &ms)
	return ms, err
}

// CreateMachine creates a machine; unless req.SkipLaunch it starts on its
// own. A region without a host with room is a 422.
func (c *Client) CreateMachine(ctx context.Context, app string, req CreateMachineRequest) (*Machine, error) {
	var m Machine
	if err := c.do(ctx, http.MethodPost, appPath(app)+"/machines", nil, req, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// GetMachine returns one machine.
func (c *Client) GetMachine(ctx context.Context, app, id string) (*Machine, error) {
	var m Machine
	if err := c.do(ctx, http.MethodGet, machinePath(app, id), nil, nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// UpdateMachine replaces a machine's config.
func (c *Client) UpdateMachine(ctx context.Context, app, id string, req CreateMachineRequest) (*Machine, error) {
	var m Machine
	if err := c.do(ctx, http.MethodPost, machinePath(app, id), nil, req, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// DestroyMachine destroys a machine; a started one only with force (else
// the server answers 412).
func (c *Client) DestroyMachine(ctx context.Context, app, id string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, http.MethodDelete, machinePath(app, id), q, nil, nil)
}

// CordonMachine takes the machine out of the edges' rotation; its process
// keeps running.
func (c *Client) CordonMachine(ctx context.Context, app, id string) error {
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/cordon", nil, nil, nil)
}

// UncordonMachine puts a cordoned machine back into rotation.
func (c *Client) UncordonMachine(ctx context.Context, app, id string) error {
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/uncordon", nil, nil, nil)
}

// StartMachine asks for a machine to be started.
func (c *Client) StartMachine(ctx context.Context, app, id string) error {
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/start", nil, nil, nil)
}

// StopMachine asks for a machine to be stopped; req may be nil.
func (c *Client) StopMachine(ctx context.Context, app, id string, req *StopRequest) error {
	var in any
	if req != nil {
		in = req
	}
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/stop", nil, in, nil)
}

// SuspendMachine asks for a started machine to be suspended: snapshotted
// and stopped, to resume from the snapshot on its next start. The server
// answers 409 (IsConflict) when the machine is not started and 400 when it
// has more than MaxSuspendMemoryMB of memory.
func (c *Client) SuspendMachine(ctx context.Context, app, id string) error {
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/suspend", nil, nil, nil)
}

// RestartMachine stops the machine's process (with signal and timeout
// when set, else its stop_config) and starts it afresh as a new instance.
func (c *Client) RestartMachine(ctx context.Context, app, id, signal string, timeout time.Duration) error {
	q := url.Values{}
	if signal != "" {
		q.Set("signal", signal)
	}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/restart", q, nil, nil)
}

// SignalMachine has the machine's host send its running process signal
// ("SIGHUP", ...); the server answers 412 when it is not started.
func (c *Client) SignalMachine(ctx context.Context, app, id, signal string) error {
	return c.do(ctx, http.MethodPost, machinePath(app, id)+"/signal", nil, map[string]string{"signal": signal}, nil)
}

// WaitMachine waits until the machine is in state, for at most timeout
// (rounded up to whole seconds). The server answers 408 (IsTimeout) when
// the time runs out and 409 (IsConflict) when the machine fails while
// waited for started; the error then carries the exit code and last logs.
func (c *Client) WaitMachine(ctx context.Context, app, id, state string, timeout time.Duration) error {
	secs := int((timeout + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	q := url.Values{"state": {state}, "timeout": {strconv.Itoa(secs)}}
	// The server answers by the timeout (408); a server that does not
	// (frozen, or gone without closing the connection) must not hold
	// the caller longer than that and a margin.
	wctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+waitMargin)
	defer cancel()
	err := c.do(wctx, http.MethodGet, machinePath(app, id)+"/wait", q, nil, nil)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return fmt.Errorf("waiting for machine %s to be %s: the control plane at %s gave no answer %v past the wait's %d s; check it with `perch server status`: %w", id, state, c.BaseURL(), waitMargin, secs, err)
	}
	return err
}

// waitMargin is how long past its timeout a wait may go unanswered.
var waitMargin = 30 * time.Second

// LogOptions selects the log lines of an app.
type LogOptions struct {
	// Follow keeps the stream open for new lines until ctx ends.
	Follow  bool
	Region  string
	Machine string
	// Lines is how many past lines to send first (server default when 0).
	Lines int
}

// Logs calls fn for each log line of app, in order, until the stream ends,
// fn returns an error (which Logs returns) or ctx ends (nil when following:
// ending a follow is how it stops).
func (c *Client) Logs(ctx context.Context, app string, opts LogOptions, fn func(LogLine) error) error {
	q := url.Values{}
	if opts.Follow {
		q.Set("follow", "true")
	}
	if opts.Region != "" {
		q.Set("region", opts.Region)
	}
	if opts.Machine != "" {
		q.Set("machine", opts.Machine)
	}
	if opts.Lines > 0 {
		q.Set("lines", strconv.Itoa(opts.Lines))
	}
	resp, err := c.send(ctx, http.MethodGet, appPath(app)+"/logs", q, nil)
	if err != nil {
		if ctx.Err() != nil && opts.Follow {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var line LogLine
		if err := dec.Decode(&line); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil && opts.Follow {
				return nil
			}
			return fmt.Errorf("reading logs of %s: %w", app, err)
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}
