package edge

import (
	"context"
	"errors"
	"net"
	"time"
)

// Target says where the machine a connection goes to lives, so that a
// Dialer can pick the path: straight to a machine on this host, through the
// mesh to another host.
type Target struct {
	App string
	// Org is the app's organisation, whose 6PN prefix the machine's
	// private IPv6 address is in (mesh.MachineAddr).
	Org       string
	MachineID string
	HostID    string
	Region    string
	// Local is true when the machine runs on this edge's own host.
	Local bool
	// Pipelined says the caller takes a connection before the machine is
	// known to be reached: the Dialer may return one at once and let the
	// request go out with the connect, as long as a connection that then
	// cannot reach the machine fails its first Read with an error wrapping
	// ErrNotDelivered, having passed none of the request on. The edge's
	// HTTP proxy sets it; raw TCP and UDP, which cannot send elsewhere
	// once the client's bytes went out, do not.
	Pipelined bool
}

// ErrNotDelivered is wrapped by the error of a Pipelined connection whose
// machine was never reached: nothing written to it was passed on, so the
// edge sends the request to another machine, as after a failed connect
// (the mesh relay's "ERR" answer).
var ErrNotDelivered = errors.New("edge: the connection never reached the machine; nothing was delivered")

// Dialer connects the edge to machines. addr is the machine's
// private IP and internal port.
type Dialer interface {
	DialContext(ctx context.Context, network, addr string, target Target) (net.Conn, error)
}

// NetDialer dials machines directly; enough while every machine is reachable
// by its private IP from this host (one-machine worlds, tests).
type NetDialer struct {
	D net.Dialer
}

var _ Dialer = (*NetDialer)(nil)

// NewNetDialer is a NetDialer with a connect timeout short enough that a
// dead machine costs little before the next one is tried.
func NewNetDialer() *NetDialer {
	return &NetDialer{D: net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}}
}

// DialContext dials addr, ignoring target.
func (d *NetDialer) DialContext(ctx context.Context, network, addr string, _ Target) (net.Conn, error) {
	return d.D.DialContext(ctx, network, addr)
}
