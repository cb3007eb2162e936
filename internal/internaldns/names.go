package internaldns

import "strings"

// kind is which of the .internal names a query asks.
type kind int

const (
	kindNone    kind = iota // a name outside .internal
	kindUnknown             // under .internal, but none of the forms below
	kindApex                // internal.
	kindApps                // _apps.internal
	kindApp                 // <app>.internal
	kindRegion              // <region>.<app>.internal
	kindRegions             // regions.<app>.internal
	kindMachine             // <id>.vm.<app>.internal
)

// name is a parsed query name; its fields are lower case.
type name struct {
	kind   kind
	app    string
	region string
	id     string
}

// parseName reads a query name, with or without the trailing dot, in any
// case.
func parseName(s string) name {
	s = strings.ToLower(strings.TrimSuffix(s, "."))
	if s == "internal" {
		return name{kind: kindApex}
	}
	rest, ok := strings.CutSuffix(s, ".internal")
	if !ok {
		return name{kind: kindNone}
	}
	l := strings.Split(rest, ".")
	for _, label := range l {
		if label == "" {
			return name{kind: kindUnknown}
		}
	}
	switch {
	case len(l) == 1 && l[0] == "_apps":
		return name{kind: kindApps}
	case len(l) == 1:
		return name{kind: kindApp, app: l[0]}
	case len(l) == 2 && l[0] == "regions":
		return name{kind: kindRegions, app: l[1]}
	case len(l) == 2:
		return name{kind: kindRegion, region: l[0], app: l[1]}
	case len(l) == 3 && l[1] == "vm":
		return name{kind: kindMachine, id: l[0], app: l[2]}
	}
	return name{kind: kindUnknown}
}
