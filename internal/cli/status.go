package cli

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newStatusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the app's machines by region, with state, health checks and age",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			a, err := c.GetApp(ctx, app)
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			ms, err := c.ListMachines(ctx, app, "")
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if ms == nil {
				ms = []api.Machine{}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), struct {
					App      *api.App      `json:"app"`
					Machines []api.Machine `json:"machines"`
				}{a, ms})
			}
			if a.Suspended != nil {
				fmt.Fprintln(cmd.OutOrStdout(), a.Suspended.Message())
			}
			renderStatus(cmd.OutOrStdout(), a.Name, ms, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// renderStatus prints an app's machines grouped by region.
func renderStatus(w io.Writer, app string, ms []api.Machine, now time.Time) {
	fmt.Fprintf(w, "App: %s\n", app)
	if len(ms) == 0 {
		fmt.Fprintln(w, "No machines. Run `perch deploy` to create some.")
		return
	}
	byGroup := map[string][]api.Machine{}
	for _, m := range ms {
		byGroup[processGroup(m)] = append(byGroup[processGroup(m)], m)
	}
	if len(byGroup) == 1 {
		fmt.Fprintln(w)
		renderMachines(w, ms, now)
		return
	}
	// Several process groups: a table each, as fly status shows them.
	for _, g := range slices.Sorted(maps.Keys(byGroup)) {
		// The heading counts the machines the group keeps: a deploy's
		// replaced machines may still be on their way out.
		going := 0
		for _, m := range byGroup[g] {
			if st := machineState(m); st == "destroying" || st == "destroyed" {
				going++
			}
		}
		head := plural(len(byGroup[g])-going, "machine")
		if going > 0 {
			head += fmt.Sprintf(", %d being destroyed", going)
		}
		fmt.Fprintf(w, "\nProcess group %s (%s)\n", g, head)
		renderMachines(w, byGroup[g], now)
	}
}

// renderMachines prints machines as a table sorted by region then age,
// with a failed machine's exit code and last log lines, and the checks that
// do not pass, under its row.
func renderMachines(w io.Writer, ms []api.Machine, now time.Time) {
	ms = slices.Clone(ms)
	slices.SortStableFunc(ms, func(a, b api.Machine) int {
		return cmp.Or(cmp.Compare(a.Region, b.Region), a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	t := &table{header: []string{"ID", "STATE", "CHECKS", "REGION", "RUNTIME", "IMAGE", "RELEASE", "AGE"}}
	for _, m := range ms {
		t.add([]string{
			m.ID,
			machineState(m),
			checksSummary(m.Checks),
			m.Region,
			cmp.Or(m.Config.Guest.Runtime, "runc"),
			m.Config.Image,
			cmp.Or(m.Config.Metadata[metaRelease], "-"),
			formatAge(now.Sub(m.CreatedAt)),
		}, append(append(readyNotes(m), failureNotes(m)...), checkNotes(m)...)...)
	}
	t.write(w)
}

// machineState is the state column: the host's being unreachable matters
// more than the state it last reported, which may be stale; a started
// machine that takes no traffic yet says so.
func machineState(m api.Machine) string {
	if m.HostStatus == api.HostUnreachable {
		return m.State + " (host unreachable)"
	}
	if m.State == api.StateStarted && !m.Ready && m.NotReady != "" {
		return m.State + " (not ready)"
	}
	return m.State
}

// readyNotes says why a machine meant to run takes no traffic.
func readyNotes(m api.Machine) []string {
	switch {
	case m.Cordoned:
		return []string{"cordoned: takes no traffic"}
	case m.Ready || m.NotReady == "" || (m.State != api.StateStarted && m.State != api.StateStarting):
		return nil
	}
	return []string{"not ready: " + m.NotReady}
}

func failureNotes(m api.Machine) []string {
	oom := "out of memory: killed at its memory limit; give it more (memory_mb in [[vm]])"
	if m.State != api.StateFailed {
		if m.OOMKilled {
			return []string{"last exit: " + oom}
		}
		return nil
	}
	head := "failed"
	if m.ExitCode != nil {
		head = fmt.Sprintf("exit code %d", *m.ExitCode)
	}
	if m.OOMKilled {
		head = fmt.Sprintf("%s, %s", head, oom)
	}
	if len(m.LastLogs) == 0 {
		return []string{head}
	}
	notes := []string{head + ", last log lines:"}
	for _, l := range m.LastLogs {
		notes = append(notes, "| "+l)
	}
	return notes
}
