package hostnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// link is the part of `ip -j -d link` output hostnet reads.
type link struct {
	Name     string   `json:"ifname"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	Alias    string   `json:"ifalias"`
	Address  string   `json:"address"` // MAC
	LinkInfo struct {
		Kind string `json:"info_kind"`
	} `json:"linkinfo"`
	AddrInfo []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
		Scope     string `json:"scope"`
	} `json:"addr_info"`
}

// nsArgs prefixes an ip command with -n ns when ns is not the host's.
func nsArgs(ns string, args ...string) []string {
	if ns == "" {
		return args
	}
	return append([]string{"-n", ns}, args...)
}

// getLink returns the link name in namespace ns ("" for the host's), or nil
// if there is none.
func getLink(ns, name string) (*link, error) {
	out, err := ip(nsArgs(ns, "-j", "-d", "link", "show", "dev", name)...)
	if errors.Is(err, errNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("hostnet: parse ip link output: %w", err)
	}
	if len(links) != 1 {
		return nil, nil
	}
	return &links[0], nil
}

// listLinks returns the host's links of kind ("veth", "bridge").
func listLinks(kind string) ([]link, error) {
	out, err := ip("-j", "-d", "link", "show", "type", kind)
	if err != nil {
		return nil, err
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("hostnet: parse ip link output: %w", err)
	}
	return links, nil
}

// ipv4Addrs returns the IPv4 addresses of dev in namespace ns.
func ipv4Addrs(ns, dev string) ([]netip.Prefix, error) { return addrs(ns, "-4", dev) }

// addrs returns the addresses of family ("-4" or "-6") and global scope of
// dev in namespace ns.
func addrs(ns, family, dev string) ([]netip.Prefix, error) {
	out, err := ip(nsArgs(ns, "-j", family, "addr", "show", "dev", dev, "scope", "global")...)
	if err != nil {
		return nil, err
	}
	var links []link
	if err := json.Unmarshal(out, &links); err != nil {
		return nil, fmt.Errorf("hostnet: parse ip addr output: %w", err)
	}
	var addrs []netip.Prefix
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Family != "inet" && a.Family != "inet6" {
				continue
			}
			addr, err := netip.ParseAddr(a.Local)
			if err != nil {
				return nil, fmt.Errorf("hostnet: parse address %q of %s: %w", a.Local, dev, err)
			}
			addrs = append(addrs, netip.PrefixFrom(addr, a.PrefixLen))
		}
	}
	return addrs, nil
}
