// Package proxyproto writes and reads the PROXY protocol header (HAProxy's
// proxy-protocol.txt, versions 1 and 2) that tells an app behind the edge
// the address of the client it cannot see: the edge's "proxy_proto"
// handler writes one before the first byte of each connection it forwards.
// The reader exists for tests, fuzzing and hosts that receive such headers.
// It imports nothing of Perch; the edge imports it.
package proxyproto

import (
	"errors"
	"net/netip"
)

// Header is one PROXY protocol header.
type Header struct {
	// Version is 1 (text) or 2 (binary).
	Version int
	// Local marks a version 2 LOCAL command: the connection was opened by
	// the proxy itself (a health check), not on behalf of a client, so it
	// carries no addresses.
	Local bool
	// Source is the client's address and Destination the address the client
	// connected to. Both are zero when the header carries no addresses
	// (v1 "UNKNOWN", a v2 LOCAL command or an unsupported address family).
	Source, Destination netip.AddrPort
	// Authority is the host name the client asked for (the TLS server
	// name), sent in version 2 as a PP2_TYPE_AUTHORITY TLV. Version 1 has
	// no room for it.
	Authority string
}

// ErrNoHeader means the stream does not start with a PROXY header.
var ErrNoHeader = errors.New("proxyproto: no PROXY protocol header")

// hasAddrs says whether h carries addresses a receiver should use.
func (h *Header) hasAddrs() bool {
	return !h.Local && h.Source.IsValid() && h.Destination.IsValid()
}

const (
	// v1Max is the longest version 1 header, "\r\n" included.
	v1Max = 107
	// v2HeadLen is the fixed part of a version 2 header.
	v2HeadLen = 16
	// MaxAuthority is the longest authority a header carries: a host name
	// (a TLS server name, at most 255 bytes as DNS has them). Receivers cap
	// the whole header too (4,096 bytes in the common Go library), which
	// a longer one could pass.
	MaxAuthority = 255
	// tlvAuthority is PP2_TYPE_AUTHORITY.
	tlvAuthority = 0x02
)

// v2Sig opens every version 2 header.
var v2Sig = [12]byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}
