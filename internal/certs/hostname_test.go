package certs

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckHostname(t *testing.T) {
	for _, tc := range []struct{ in, want, why string }{
		{in: "www.example.com", want: "www.example.com"},
		{in: "WWW.Example.COM.", want: "www.example.com"},
		{in: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{in: "", why: "empty"},
		{in: "*.example.com", why: "DNS-01"},
		{in: "localhost", why: "fully qualified"},
		{in: "192.0.2.1", why: "IP address"},
		{in: "::1", why: "IP address"},
		{in: "a..example.com", why: "1-63"},
		{in: "-a.example.com", why: "dash"},
		{in: "a_b.example.com", why: "letters, digits"},
		{in: "bücher.example", why: "xn--"},
		{in: "example.123", why: "top-level"},
		{in: "app.perch.local", why: "dev CA"},
		{in: strings.Repeat("a", 64) + ".com", why: "1-63"},
	} {
		got, err := checkHostname(tc.in, "perch.local")
		if tc.why == "" {
			if err != nil || got != tc.want {
				t.Errorf("checkHostname(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("checkHostname(%q) error %v; want ErrInvalid saying %q", tc.in, err, tc.why)
		}
	}
}

// FuzzCheckHostname: whatever a user sends, an accepted hostname is in
// canonical form (checking it again changes nothing) and is a valid key of
// the certificates bucket.
func FuzzCheckHostname(f *testing.F) {
	for _, s := range []string{"www.example.com", "WWW.Example.COM.", "*.x.y", "a..b", "1.2.3.4", "xn--bcher-kva.example", "app.perch.local", " a.b "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		h, err := checkHostname(in, "perch.local")
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("checkHostname(%q): error of the wrong kind: %v", in, err)
			}
			return
		}
		if again, err := checkHostname(h, "perch.local"); err != nil || again != h {
			t.Fatalf("checkHostname(%q) = %q, but checking that gives %q, %v", in, h, again, err)
		}
		if !validKVKey(h) || kvKey(h) != h {
			t.Fatalf("accepted hostname %q is not a plain KV key", h)
		}
	})
}

// validKVKey is NATS's rule for key-value keys.
func validKVKey(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' || strings.Contains(k, "..") {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-/_=.", c) >= 0) {
			return false
		}
	}
	return true
}
