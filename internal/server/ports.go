package server

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/store"
)

// Public ports and the shared edge address. Every app is reached on the
// same address of each edge, so apps share port numbers: the edge tells
// them apart by TLS server name (ports with "tls", and TLS passthrough)
// or Host header (ports with "http"). A raw TCP port (neither "tls" nor
// "http") cannot be told apart when its clients do not speak TLS, so it
// belongs to one app: no other app may use that port number except with
// "tls" first, which the edge recognises by SNI. Apps that each have an
// anycast address of their own (docs/anycast.md) may share any port,
// raw TCP and UDP too: the address tells them apart.

// portKind is how the edge tells a port's apps apart.
type portKind int

const (
	kindTLS  portKind = iota // "tls" first: by SNI
	kindHTTP                 // "http" in the clear: by Host
	kindRaw                  // raw TCP (with or without proxy_proto): not at all
	kindUDP                  // UDP: not at all, and apart from TCP's port numbers
)

// portKey is a public port and its protocol: TCP 53 and UDP 53 are two.
type portKey struct {
	udp  bool
	port int
}

func kindOf(p api.Port) portKind {
	switch {
	case slices.Contains(p.Handlers, "tls"):
		return kindTLS
	case slices.Contains(p.Handlers, "http"):
		return kindHTTP
	}
	return kindRaw
}

// validatePorts checks the handlers and options of every public port of
// c: what the edge can serve (400 otherwise).
func validatePorts(c *api.MachineConfig) error {
	seen := map[portKey]string{}
	for i, svc := range c.Services {
		udp := svc.Protocol == "udp"
		if svc.Protocol != "" && svc.Protocol != "tcp" && !udp {
			return errf(http.StatusBadRequest, "config.services[%d].protocol %q is not one the edge serves; use \"tcp\" or \"udp\"", i, svc.Protocol)
		}
		for j, p := range svc.Ports {
			where := fmt.Sprintf("config.services[%d].ports[%d]", i, j)
			k := portKey{udp: udp, port: p.Port}
			if prev, dup := seen[k]; dup {
				return errf(http.StatusBadRequest, "%s: %s port %d is already used by %s; use each public port once per protocol", where, protoName(udp), p.Port, prev)
			}
			seen[k] = where
			if udp {
				if len(p.Handlers) > 0 || p.ForceHTTPS || p.TLSOptions != nil || p.ProxyProtoOptions != nil {
					return errf(http.StatusBadRequest, "%s (port %d): a UDP service takes no handlers or TLS/PROXY options: the edge carries its datagrams as they are", where, p.Port)
				}
				continue
			}
			if err := validatePort(p); err != nil {
				return errf(http.StatusBadRequest, "%s (port %d): %v", where, p.Port, err)
			}
		}
	}
	return nil
}

func protoName(udp bool) string {
	if udp {
		return "UDP"
	}
	return "TCP"
}

func validatePort(p api.Port) error {
	for _, h := range p.Handlers {
		if h != "tls" && h != "http" && h != "proxy_proto" {
			return fmt.Errorf(`handler %q is not one the edge has; use "tls", "http", "proxy_proto", or none for raw TCP`, h)
		}
	}
	if slices.Contains(p.Handlers, "http") && slices.Contains(p.Handlers, "proxy_proto") {
		return fmt.Errorf(`handlers "http" and "proxy_proto" do not go together; apps behind "http" get the client's address in Perch-Client-IP`)
	}
	if p.ForceHTTPS && !slices.Contains(p.Handlers, "http") {
		return fmt.Errorf(`force_https needs the "http" handler`)
	}
	if o := p.TLSOptions; o != nil {
		for _, v := range o.Versions {
			if v != "TLSv1.2" && v != "TLSv1.3" {
				return fmt.Errorf(`tls_options.versions: %q is not one the edge serves; use "TLSv1.2" or "TLSv1.3"`, v)
			}
		}
		for _, a := range o.ALPN {
			if a == "" || len(a) > 255 {
				return fmt.Errorf("tls_options.alpn: entries must be 1-255 characters long, got %q", a)
			}
		}
	}
	if o := p.ProxyProtoOptions; o != nil && o.Version != "" && o.Version != "v1" && o.Version != "v2" {
		return fmt.Errorf(`proxy_proto_options.version %q is not "v1" or "v2"`, o.Version)
	}
	return nil
}

// checkPortSharing refuses (409) a config of app that would share a raw
// TCP port with another app on the shared edge address. Callers hold
// placeMu, so two apps cannot claim one port at once.
func (s *Server) checkPortSharing(ctx context.Context, app string, c *api.MachineConfig) error {
	mine := publicPorts(c)
	if len(mine) == 0 {
		return nil
	}
	specs, err := store.List[store.MachineSpec](ctx, s.st.Machines, ">")
	if err != nil {
		return err
	}
	dedicated, err := s.dedicatedApps(ctx) // ips.go
	if err != nil {
		return err
	}
	for _, m := range specs {
		if m.App == app || m.Desired == store.DesireDestroyed {
			continue
		}
		for k, theirs := range publicPorts(&m.Config) {
			ours, ok := mine[k]
			if !ok {
				continue
			}
			if dedicated[app] && dedicated[m.App] {
				continue // each has its own address: a collision is per address, TCP and UDP
			}
			if err := conflict(k.port, app, ours, m.App, theirs); err != nil {
				return err
			}
		}
	}
	return nil
}

// publicPorts maps each public port of c to how the edge tells it apart.
func publicPorts(c *api.MachineConfig) map[portKey]portKind {
	out := map[portKey]portKind{}
	for _, svc := range c.Services {
		for _, p := range svc.Ports {
			if svc.Protocol == "udp" {
				out[portKey{udp: true, port: p.Port}] = kindUDP
				continue
			}
			out[portKey{port: p.Port}] = kindOf(p)
		}
	}
	return out
}

// conflict says why app may not have port with kind ours while other has
// it with kind theirs, or nil.
func conflict(port int, app string, ours portKind, other string, theirs portKind) error {
	switch {
	case ours == kindUDP:
		return errf(http.StatusConflict, "UDP port %d: app %q already uses UDP port %d on the shared edge address, and a datagram names no app, so each UDP port belongs to one app. Choose another port, or give both apps an address of their own (perch ips allocate-v4, with --anycast-v4 pools: docs/anycast.md)", port, other, port)
	case ours == kindTLS || theirs == kindTLS:
		return nil // TLS clients name their app
	case ours == kindHTTP && theirs == kindHTTP:
		return nil // HTTP requests name their app
	case ours == kindRaw:
		return errf(http.StatusConflict, "port %d: app %q already uses port %d on the shared edge address, and raw TCP (no handlers) needs a port of its own, because the edge cannot tell which app a plain TCP connection is for. Choose another port, or, if your clients speak TLS, add handlers = [\"tls\"] so that the edge routes by TLS server name",
			port, other, port)
	default:
		return errf(http.StatusConflict, "port %d: app %q uses port %d for raw TCP (no handlers) on the shared edge address, which takes every plain connection to it. Choose another port for %s, or serve it with handlers = [\"tls\", \"http\"]",
			port, other, port, strings.TrimSpace(app))
	}
}
