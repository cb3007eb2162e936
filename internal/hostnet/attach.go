package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/perchhq/perch/internal/runtime"
)

// Attach gives machine id its network: the namespace NetnsName(id) with lo
// up and eth0 holding n.Addr (and n.Addr6 when set), a default route via
// n.Gateway, Multipath TCP off (see disableMPTCP), and eth0's peer
// VethName(id) on the host, a port of n.Bridge.
// It returns the namespace's path for the runtime. It is idempotent, so an
// agent can call it again for a machine that is already running.
func Attach(id string, n runtime.Net) (netnsPath string, err error) {
	if err := CheckID(id); err != nil {
		return "", err
	}
	if err := checkLink(n.Bridge); err != nil {
		return "", err
	}
	if !n.Addr.IsValid() || !n.Addr.Addr().Is4() || !n.Gateway.Is4() {
		return "", fmt.Errorf("hostnet: attach %s: address %v and gateway %v must be IPv4", id, n.Addr, n.Gateway)
	}
	if err := checkAddr6(n.Addr6); err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	ns, veth := NetnsName(id), VethName(id)
	if _, statErr := os.Stat(NetnsPath(id)); errors.Is(statErr, os.ErrNotExist) {
		if _, err := ip("netns", "add", ns); err != nil {
			return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
		}
		// A namespace this call made is not left behind when it fails.
		defer func() {
			if err != nil {
				ip("netns", "del", ns)
			}
		}()
	}
	created, err := ensureVeth(id, ns, veth)
	if err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	if created {
		// The address may have had another MAC until now (a replaced
		// machine); a stale neighbour entry would delay the first packets.
		ip("neigh", "flush", "to", n.Addr.Addr().String(), "dev", n.Bridge)
	}
	steps := [][]string{
		{"link", "set", veth, "master", n.Bridge, "group", fmt.Sprint(PortGroup(n.Bridge)), "up"},
		nsArgs(ns, "link", "set", "lo", "up"),
		nsArgs(ns, "link", "set", peerName, "up"),
	}
	for _, args := range steps {
		if _, err := ip(args...); err != nil {
			return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
		}
	}
	if err := setAddrs(ns, "-4", n.Addr); err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	if err := setAddrs(ns, "-6", n.Addr6); err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	if _, err := ip(nsArgs(ns, "route", "replace", "default", "via", n.Gateway.String(), "dev", peerName)...); err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	if n.Addr6.IsValid() {
		// Other organisations' and other hosts' 6PN goes to the host, whose
		// rules (ApplyPolicy) decide.
		if _, err := ip(nsArgs(ns, "-6", "route", "replace", Range6.String(), "via", gateway6.Addr().String(), "dev", peerName, "mtu", fmt.Sprint(Route6MTU))...); err != nil {
			return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
		}
	}
	if err := disableMPTCP(ns); err != nil {
		return "", fmt.Errorf("hostnet: attach %s: %w", id, err)
	}
	return NetnsPath(id), nil
}

// checkAddr6 accepts no address, or an IPv6 one with its prefix length.
func checkAddr6(p netip.Prefix) error {
	if p == (netip.Prefix{}) {
		return nil
	}
	if !p.IsValid() || !p.Addr().Is6() || p.Addr().Is4In6() || p.Addr().IsLinkLocalUnicast() {
		return fmt.Errorf("IPv6 address %v must be a global or private IPv6 address with a prefix length, like fdaa:0:1::a00:2/64", p)
	}
	return nil
}

// setAddrs makes want (none when invalid) the only address of family ("-4"
// or "-6") on eth0 in ns. Flushing first drops an address left from an
// earlier attachment; IPv6 link-local addresses are kept, neighbour
// discovery needs them.
func setAddrs(ns, family string, want netip.Prefix) error {
	have, err := addrs(ns, family, peerName)
	if err != nil {
		return err
	}
	var wantList []netip.Prefix
	if want.IsValid() {
		wantList = []netip.Prefix{want}
	}
	if slices.Equal(have, wantList) {
		return nil
	}
	if len(have) > 0 {
		if _, err := ip(nsArgs(ns, family, "addr", "flush", "dev", peerName, "scope", "global")...); err != nil {
			return err
		}
	}
	if !want.IsValid() {
		return nil
	}
	args := []string{family, "addr", "add", want.String(), "dev", peerName}
	if family == "-6" {
		// Without duplicate address detection the address is usable at
		// once, not a second later; the host hands out each address once.
		args = append(args, "nodad")
	}
	_, err = ip(nsArgs(ns, args...)...)
	return err
}

// ensureVeth makes the pair veth (host) / eth0 (in ns) exist, replacing a
// host end whose peer is not in ns. The host end's alias holds the full
// machine id, because VethName keeps only part of it.
func ensureVeth(id, ns, veth string) (created bool, err error) {
	l, err := getLink("", veth)
	if err != nil {
		return false, err
	}
	if l != nil {
		if !ownVeth(l, id) {
			return false, fmt.Errorf("%s exists and belongs to %q, not machine %s: machine ids must differ in their first %d characters", veth, l.Alias, id, vethIDChars)
		}
		peer, err := getLink(ns, peerName)
		if err != nil {
			return false, err
		}
		if peer != nil {
			return false, nil
		}
		if _, err := ip("link", "del", veth); err != nil && !errors.Is(err, errNotExist) {
			return false, err
		}
	}
	// Creating the peer directly inside ns avoids a temporary name on the host.
	if _, err := ip("link", "add", veth, "type", "veth", "peer", "name", peerName, "netns", ns); err != nil {
		return false, err
	}
	_, err = ip("link", "set", veth, "alias", id)
	return true, err
}

// Detach removes machine id's veth pair and network namespace, or its tap.
// Missing pieces are not an error.
func Detach(id string) error {
	if err := CheckID(id); err != nil {
		return err
	}
	var errs []error
	veth := VethName(id)
	if l, err := getLink("", veth); err != nil {
		errs = append(errs, err)
	} else if l != nil && ownVeth(l, id) {
		if _, err := ip("link", "del", veth); err != nil && !errors.Is(err, errNotExist) {
			errs = append(errs, err)
		}
	}
	if err := detachTap(id); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(NetnsPath(id)); err == nil {
		if _, err := ip("netns", "del", NetnsName(id)); err != nil && !errors.Is(err, errNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("hostnet: detach %s: %w", id, err)
	}
	return nil
}

// ownVeth reports whether l is machine id's veth. An empty alias is taken as
// ours: an attach interrupted between creating the pair and naming it.
func ownVeth(l *link, id string) bool {
	return l.LinkInfo.Kind == "veth" && (l.Alias == id || l.Alias == "")
}
