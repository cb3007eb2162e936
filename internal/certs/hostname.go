package certs

import (
	"fmt"
	"net/netip"
	"strings"
)

// checkHostname checks a hostname a user asks a certificate for and
// returns it lower case without a trailing dot.
func checkHostname(host, devDomain string) (string, error) {
	h := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(host), "."))
	bad := func(why string) error {
		return &userError{ErrInvalid, fmt.Sprintf("hostname %q is not valid: %s", host, why)}
	}
	switch {
	case h == "":
		return "", bad("it is empty")
	case strings.HasPrefix(h, "*."):
		return "", bad("wildcard certificates need the DNS-01 challenge, which Perch does not offer yet; add each hostname instead")
	case len(h) > 253:
		return "", bad("it is longer than 253 characters")
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return "", bad("it is an IP address; certificates are for DNS names")
	}
	labels := strings.Split(h, ".")
	if len(labels) < 2 {
		return "", bad("use a fully qualified name such as www.example.com")
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 {
			return "", bad("each dot-separated part must be 1-63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return "", bad("a part may not start or end with a dash")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", bad("use only letters, digits, dashes and dots (write internationalised names in their xn-- form)")
			}
		}
	}
	if last := labels[len(labels)-1]; last[0] >= '0' && last[0] <= '9' {
		return "", bad("the top-level domain cannot start with a digit")
	}
	if devDomain != "" && underDomain(h, devDomain) {
		return "", bad(fmt.Sprintf("names under %s get their certificate from the dev CA by themselves", devDomain))
	}
	return h, nil
}
