package internaldns

import (
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want name
	}{
		{"web.internal.", name{kind: kindApp, app: "web"}},
		{"WEB.Internal", name{kind: kindApp, app: "web"}},
		{"ams.web.internal.", name{kind: kindRegion, region: "ams", app: "web"}},
		{"regions.web.internal", name{kind: kindRegions, app: "web"}},
		{"0A1b2c.VM.web.internal.", name{kind: kindMachine, id: "0a1b2c", app: "web"}},
		{"_apps.internal.", name{kind: kindApps}},
		{"_APPS.INTERNAL", name{kind: kindApps}},
		{"internal.", name{kind: kindApex}},
		{"Internal", name{kind: kindApex}},
		{"x.y.web.internal.", name{kind: kindUnknown}},
		{"top2.nearest.of.web.internal.", name{kind: kindUnknown}},
		{"a..internal.", name{kind: kindUnknown}},
		{".internal.", name{kind: kindUnknown}},
		{"example.com.", name{kind: kindNone}},
		{"internal.example.com.", name{kind: kindNone}},
		{"webinternal.", name{kind: kindNone}},
		{".", name{kind: kindNone}},
		{"", name{kind: kindNone}},
	} {
		if got := parseName(tc.in); got != tc.want {
			t.Errorf("parseName(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

// FuzzParseName: any name parses without panicking; the result does not
// depend on case or on the trailing dot; a name under .internal is never
// taken for an outside one and the reverse; the labels it keeps are
// non-empty, dotless and come from the name.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"web.internal.", "ams.web.internal", "x.vm.web.internal.", "regions.web.internal",
		"_apps.internal", "internal.", "example.com.", "a..internal", "top2.nearest.of.web.internal."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := parseName(s)
		// DNS names fold ASCII case only (RFC 4343).
		ascii := !strings.ContainsFunc(s, func(r rune) bool { return r > 0x7f })
		if ascii && parseName(strings.ToUpper(s)) != n {
			t.Errorf("%q parses differently in upper case", s)
		}
		if !strings.HasSuffix(s, ".") && parseName(s+".") != n {
			t.Errorf("%q parses differently with a trailing dot", s)
		}
		low := strings.ToLower(strings.TrimSuffix(s, "."))
		under := low == "internal" || strings.HasSuffix(low, ".internal")
		if under != (n.kind != kindNone) {
			t.Errorf("%q: kind %d, but under .internal is %v", s, n.kind, under)
		}
		for _, label := range []string{n.app, n.region, n.id} {
			if strings.Contains(label, ".") || !strings.Contains(low, label) {
				t.Errorf("%q: label %q is not one of the name's", s, label)
			}
		}
		switch n.kind {
		case kindApp, kindRegion, kindRegions, kindMachine:
			if n.app == "" {
				t.Errorf("%q: kind %d without an app", s, n.kind)
			}
		}
		if (n.kind == kindRegion) != (n.region != "") || (n.kind == kindMachine) != (n.id != "") {
			t.Errorf("%q: %+v has labels its kind does not use", s, n)
		}
	})
}
