package ui

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

var funcs = template.FuncMap{
	"money":      func(v float64) string { return fmt.Sprintf("$%.2f", v) },
	"join":       strings.Join,
	"stateClass": stateClass,
	"states": func(m map[string]int) string {
		var parts []string
		for _, s := range sortedStates(m) {
			parts = append(parts, fmt.Sprintf("%d %s", m[s], s))
		}
		if len(parts) == 0 {
			return "no machines"
		}
		return strings.Join(parts, ", ")
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"short": func(s string, n int) string { return truncate(s, n) },
}
