package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

// NewServerStatusCmd is `perch server status` (cmd/perch adds it under
// `perch server`): the control plane's servers, leaders, replicas and
// leases, through the API with the stored login (admin token).
func NewServerStatusCmd() *cobra.Command {
	g := &globals{}
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the control plane's servers, which are up, the JetStream meta leader, each stream's replicas and lag, and who holds each job's lease",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			st, err := c.ClusterStatus(cmd.Context())
			if err != nil {
				return fmt.Errorf("server status: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), st)
			}
			renderClusterStatus(cmd.OutOrStdout(), st, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addLoginHint(cmd)
	return cmd
}

func renderClusterStatus(w io.Writer, st *api.ClusterStatus, now time.Time) {
	yes := map[bool]string{true: "yes", false: "NO"}
	if st.Cluster == "" {
		fmt.Fprintf(w, "Single server %s (no cluster)\n", dash(st.Server))
	} else {
		up := 0
		for _, s := range st.Servers {
			if s.Up {
				up++
			}
		}
		fmt.Fprintf(w, "Cluster %s: %d of %d servers up, quorum %s, JetStream meta leader %s (answered by %s)\n",
			st.Cluster, up, len(st.Servers), yes[st.Quorum], dash(st.MetaLeader), st.Server)
		if !st.Quorum {
			fmt.Fprintln(w, "Writes fail until a majority of the servers is up again: start the servers that are down.")
		}
	}
	fmt.Fprintln(w)
	t := &table{header: []string{"SERVER", "UP", "CURRENT", "LAG", "LAST SEEN"}}
	for _, s := range st.Servers {
		seen := "-"
		if s.Name != st.Server {
			seen = formatAge(s.LastSeen) + " ago"
		}
		role := ""
		if s.Name == st.MetaLeader && st.Cluster != "" {
			role = " (meta leader)"
		}
		t.add([]string{s.Name + role, yes[s.Up], yes[s.Current], strconv.FormatUint(s.Lag, 10), seen})
	}
	t.write(w)
	fmt.Fprintln(w)
	t = &table{header: []string{"LEASE", "HOLDER", "SINCE", "REFRESHED"}}
	for _, l := range st.Leases {
		since := "-"
		if !l.Since.IsZero() {
			since = l.Since.UTC().Format(time.RFC3339) + " (" + formatAge(now.Sub(l.Since)) + ")"
		}
		t.add([]string{l.Name, dash(l.Holder), since, formatAge(now.Sub(l.Refreshed)) + " ago"})
	}
	if len(st.Leases) == 0 {
		fmt.Fprintln(w, "No lease held: no server runs the jobs that run once (a server starting, or no quorum).")
	} else {
		t.write(w)
	}
	fmt.Fprintln(w)
	t = &table{header: []string{"STREAM", "REPLICAS", "LEADER", "MESSAGES", "OTHER REPLICAS"}}
	for _, s := range st.Streams {
		var peers []string
		for _, p := range s.Peers {
			state := "current"
			switch {
			case p.Offline:
				state = "offline"
			case !p.Current:
				state = "behind"
			}
			if p.Lag > 0 {
				state += fmt.Sprintf(", lag %d", p.Lag)
			}
			peers = append(peers, p.Name+" "+state)
		}
		t.add([]string{s.Name, strconv.Itoa(s.Replicas), dash(s.Leader), strconv.FormatUint(s.Messages, 10), dash(strings.Join(peers, "; "))})
	}
	t.write(w)
	for _, e := range st.Errors {
		fmt.Fprintln(w, "could not read:", e)
	}
}

// NewServerRemoveCmd is `perch server remove NAME`: a server of the
// cluster removed for good, its replicas moved to the others (admin
// token; docs/operations.md).
func NewServerRemoveCmd() *cobra.Command {
	g := &globals{}
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a server from the control plane's cluster for good: every bucket and stream's replica on it moves to another server, then JetStream forgets it (stop it first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			res, err := c.RemoveServer(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("server remove %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "server %s removed from the cluster; %d streams moved their replica off it and are back at full replicas\n", res.Server, len(res.Streams))
			return nil
		},
	}
	addLoginHint(cmd)
	return cmd
}
