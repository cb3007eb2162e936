package hostnet

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"slices"
)

const ipForward = "/proc/sys/net/ipv4/ip_forward"

// EnsureBridge makes the bridge name exist with address gw (the machines'
// gateway, with the prefix length of their subnet) and be up, and turns on
// IPv4 forwarding so traffic can be routed to the machines behind it. It is
// idempotent: an existing bridge keeps its other addresses.
func EnsureBridge(name string, gw netip.Prefix) error {
	if err := checkLink(name); err != nil {
		return err
	}
	if !gw.IsValid() || !gw.Addr().Is4() {
		return fmt.Errorf("hostnet: bridge %s: gateway %v must be an IPv4 address with a prefix length, like 172.30.1.1/24", name, gw)
	}
	l, err := getLink("", name)
	if err != nil {
		return fmt.Errorf("hostnet: bridge %s: %w", name, err)
	}
	if l == nil {
		if _, err := ip("link", "add", name, "type", "bridge"); err != nil {
			// Another caller may have made it in between.
			if l, _ = getLink("", name); l == nil {
				return fmt.Errorf("hostnet: create bridge: %w", err)
			}
		}
	} else if l.LinkInfo.Kind != "bridge" {
		return fmt.Errorf("hostnet: %s exists and is a %q link, not a bridge; choose another bridge name", name, l.LinkInfo.Kind)
	}
	addrs, err := ipv4Addrs("", name)
	if err != nil {
		return fmt.Errorf("hostnet: bridge %s: %w", name, err)
	}
	if !slices.Contains(addrs, gw) {
		if _, err := ip("addr", "replace", gw.String(), "dev", name); err != nil {
			return fmt.Errorf("hostnet: bridge address: %w", err)
		}
	}
	if err := pinBridgeMAC(name); err != nil {
		return err
	}
	if _, err := ip("link", "set", name, "up"); err != nil {
		return fmt.Errorf("hostnet: bridge up: %w", err)
	}
	return enableForwarding()
}

// pinBridgeMAC sets the bridge's MAC address explicitly, to the one it has.
// A Linux bridge whose address was never set takes the lowest MAC of its
// ports and changes it as ports come and go: when the veth that lent it
// is deleted (a machine destroyed), every other machine's neighbour entry
// for the gateway names a MAC nobody has, and their packets to the host
// (answers to the edge) are lost until the entry expires, seconds later.
// An address set by hand stays.
func pinBridgeMAC(name string) error {
	// Setting the address it has marks it set by hand (the kernel's
	// addr_assign_type NET_ADDR_SET); ip reads it in the agent's own network
	// namespace, where /sys may show another one's links.
	l, err := getLink("", name)
	if err != nil {
		return fmt.Errorf("hostnet: bridge %s: read its MAC address: %w", name, err)
	}
	if l == nil || l.Address == "" {
		return fmt.Errorf("hostnet: bridge %s: ip link shows no MAC address for it", name)
	}
	if _, err := ip("link", "set", "dev", name, "address", l.Address); err != nil {
		return fmt.Errorf("hostnet: bridge %s: pin its MAC address: %w", name, err)
	}
	return nil
}

func enableForwarding() error {
	cur, err := os.ReadFile(ipForward)
	if err == nil && bytes.Equal(bytes.TrimSpace(cur), []byte("1")) {
		return nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("hostnet: enable IPv4 forwarding: %w", err)
	}
	return nil
}

// DeleteBridge removes the bridge name. A missing bridge is not an error;
// a link of that name that is not a bridge is left alone and reported.
func DeleteBridge(name string) error {
	if err := checkLink(name); err != nil {
		return err
	}
	l, err := getLink("", name)
	if err != nil {
		return fmt.Errorf("hostnet: delete bridge %s: %w", name, err)
	}
	if l == nil {
		return nil
	}
	if l.LinkInfo.Kind != "bridge" {
		return fmt.Errorf("hostnet: %s is a %q link, not a bridge; not deleting it", name, l.LinkInfo.Kind)
	}
	if _, err := ip("link", "del", name); err != nil {
		return fmt.Errorf("hostnet: delete bridge: %w", err)
	}
	return nil
}
