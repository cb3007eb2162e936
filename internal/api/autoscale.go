package api

import (
	"context"
	"net/http"
	"time"
)

// MetadataAutoscaled marks, in a machine's Config.Metadata, a machine the
// autoscaler created. Only such machines are ever destroyed by it.
const MetadataAutoscaled = "perch_autoscaled"

// AutoscaleSettings are an app's `[autoscale]` section. Zero fields take
// the defaults (docs/autoscale.md).
type AutoscaleSettings struct {
	MinMachines  int `json:"min_machines"`
	MaxMachines  int `json:"max_machines"`
	MaxPerRegion int `json:"max_per_region,omitempty"`
	// Regions are the regions machines may be added in; empty: every
	// region with a host.
	Regions []string `json:"regions,omitempty"`
	// TargetUtilisation is the share of a machine's soft limit the
	// autoscaler aims at, in (0, 1]; 0 takes 0.7.
	TargetUtilisation float64 `json:"target_utilisation,omitempty"`
	// ScaleDownWindow is a Go duration ("5m"); empty takes 5m.
	ScaleDownWindow string `json:"scale_down_window,omitempty"`
}

// AutoscaleDecision is one change of a region's machine count, with the
// inputs that led to it.
type AutoscaleDecision struct {
	At     time.Time `json:"at"`
	Region string    `json:"region"`
	From   int       `json:"from"`
	To     int       `json:"to"`
	// Reason explains the change: "syd: 41 req/s from the syd edge, ...".
	Reason string `json:"reason"`
	// Blocked, if set, says why the change could not be made (the
	// Limiter's answer, or the error creating the machine).
	Blocked string `json:"blocked,omitempty"`
}

// AutoscaleRegion is the demand entering through one region's edges and
// the app's machines there.
type AutoscaleRegion struct {
	Region      string  `json:"region"`
	RPS         float64 `json:"rps"`
	Concurrency float64 `json:"concurrency"`
	// LatencyMS is the average time the region's edges took to answer the
	// app's requests; ServedBy the share of them each region's machines
	// answered.
	LatencyMS float64            `json:"latency_ms,omitempty"`
	ServedBy  map[string]float64 `json:"served_by,omitempty"`
	Machines  int                `json:"machines"`
	Started   int                `json:"started"`
	Desired   int                `json:"desired"`
}

// Autoscale is what GET /v1/apps/{app}/autoscale returns.
type Autoscale struct {
	App       string              `json:"app"`
	Enabled   bool                `json:"enabled"`
	Settings  AutoscaleSettings   `json:"settings"`
	Regions   []AutoscaleRegion   `json:"regions,omitempty"`
	Decisions []AutoscaleDecision `json:"decisions,omitempty"`
	UpdatedAt time.Time           `json:"updated_at,omitzero"`
}

// GetAutoscale returns app's autoscaling settings, demand and decisions.
func (c *Client) GetAutoscale(ctx context.Context, app string) (*Autoscale, error) {
	var a Autoscale
	if err := c.do(ctx, http.MethodGet, appPath(app)+"/autoscale", nil, nil, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// SetAutoscale turns autoscaling on for app with settings s (replacing
// earlier ones).
func (c *Client) SetAutoscale(ctx context.Context, app string, s AutoscaleSettings) (*Autoscale, error) {
	var a Autoscale
	if err := c.do(ctx, http.MethodPut, appPath(app)+"/autoscale", nil, s, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// DisableAutoscale turns autoscaling off for app. Machines it added stay.
func (c *Client) DisableAutoscale(ctx context.Context, app string) error {
	return c.do(ctx, http.MethodDelete, appPath(app)+"/autoscale", nil, nil, nil)
}
