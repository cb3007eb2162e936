package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// IPAssignment is one of an app's public addresses, as Fly's Machines API
// shows it (GET /v1/apps/{app}/ip_assignments). Type is Perch's addition:
// v4, shared_v4 or v6.
type IPAssignment struct {
	IP          string    `json:"ip"`
	Region      string    `json:"region"`
	CreatedAt   time.Time `json:"created_at"`
	ServiceName string    `json:"service_name,omitempty"`
	Shared      bool      `json:"shared"`
	Type        string    `json:"type,omitempty"`
	// Regions announce the address now (from the hosts' heartbeats).
	Regions []string `json:"regions,omitempty"`
	// Draining are the drained regions (perch regions drain): they
	// announce no address.
	Draining []string `json:"draining,omitempty"`
}

// IPAssignments is the body of GET /v1/apps/{app}/ip_assignments.
type IPAssignments struct {
	IPs []IPAssignment `json:"ips"`
}

// AssignIPRequest is the body of POST /v1/apps/{app}/ip_assignments: Type
// is v4 (dedicated), shared_v4 or v6. Region, OrgSlug, Network and
// ServiceName are Fly's; Perch refuses a region or network.
type AssignIPRequest struct {
	Type        string `json:"type"`
	Region      string `json:"region,omitempty"`
	OrgSlug     string `json:"org_slug,omitempty"`
	Network     string `json:"network,omitempty"`
	ServiceName string `json:"service_name,omitempty"`
}

// ListIPs lists app's anycast addresses.
func (c *Client) ListIPs(ctx context.Context, app string) ([]IPAssignment, error) {
	var out IPAssignments
	err := c.do(ctx, http.MethodGet, appPath(app)+"/ip_assignments", nil, nil, &out)
	return out.IPs, err
}

// AssignIP allocates an address of typ (v4, shared_v4, v6) to app.
func (c *Client) AssignIP(ctx context.Context, app, typ string) (*IPAssignment, error) {
	var out IPAssignment
	if err := c.do(ctx, http.MethodPost, appPath(app)+"/ip_assignments", nil, AssignIPRequest{Type: typ}, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ReleaseIP takes ip back from app; an address its machines with public
// services still answer on is refused (409) unless force.
func (c *Client) ReleaseIP(ctx context.Context, app, ip string, force bool) error {
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return c.do(ctx, http.MethodDelete, appPath(app)+"/ip_assignments/"+url.PathEscape(ip), q, nil, nil)
}
