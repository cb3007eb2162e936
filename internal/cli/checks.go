package cli

import (
	"fmt"
	"strings"

	"github.com/perchhq/perch/internal/api"
)

// checksSummary is the CHECKS column: how many checks are in each status,
// "-" for a machine without results.
func checksSummary(cs []api.CheckStatus) string {
	if len(cs) == 0 {
		return "-"
	}
	n := map[string]int{}
	for _, c := range cs {
		n[c.Status]++
	}
	var parts []string
	for _, s := range []string{api.CheckPassing, api.CheckWarning, api.CheckCritical} {
		if n[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n[s], s))
		}
	}
	return strings.Join(parts, ", ")
}

// checkNotes are the lines under a machine's row for checks that do not
// pass: which check, and what it saw.
func checkNotes(m api.Machine) []string {
	var notes []string
	for _, c := range m.Checks {
		if c.Status == api.CheckPassing {
			continue
		}
		note := fmt.Sprintf("check %s is %s", c.Name, c.Status)
		if c.Status == api.CheckWarning {
			note += " (grace period after start)"
		}
		if c.Output != "" {
			note += ": " + c.Output
		}
		notes = append(notes, note)
	}
	return notes
}
