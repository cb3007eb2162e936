package cli

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newHostsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "hosts",
		Short: "List the hosts and the round-trip times they measure to each other over the mesh",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			hosts, err := c.ListHosts(cmd.Context())
			if err != nil {
				return fmt.Errorf("hosts: %w", err)
			}
			if hosts == nil {
				hosts = []api.Host{}
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), hosts)
			}
			renderHosts(cmd.OutOrStdout(), hosts, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newJoinTokenCmd(g), newHostRemoveCmd(g)) // jointoken.go
	return cmd
}

// renderHosts prints the hosts as a table and, under it, the round-trip
// time matrix between the hosts that are up.
func renderHosts(w io.Writer, hosts []api.Host, now time.Time) {
	if len(hosts) == 0 {
		fmt.Fprintln(w, "No hosts yet: start an agent with `perch agent --region CODE`, or a whole world with `perch dev up`.")
		return
	}
	hosts = slices.Clone(hosts)
	slices.SortFunc(hosts, func(a, b api.Host) int {
		// The control plane first: it is the one every other host joins.
		return cmp.Or(-cmp.Compare(a.Role, b.Role), cmp.Compare(a.Region, b.Region), cmp.Compare(a.ID, b.ID))
	})
	t := &table{header: []string{"ID", "REGION", "STATUS", "ADDRESS", "MESH ADDR", "IMAGES", "DISK FREE", "LAST SEEN"}}
	for _, h := range hosts {
		t.add([]string{h.ID, hostRegion(h), h.Status, dash(h.Address), meshAddrCell(h), imageDisk(h.Disk), diskFree(h.Disk), formatAge(now.Sub(h.LastSeen)) + " ago"}, bgpNotes(h.BGP)...)
	}
	t.write(w)
	fmt.Fprintln(w)
	renderRTT(w, hosts)
}

// meshAddrCell is the host's mesh address, with "(tun)" when its mesh TCP
// is the kernel's (netstack, the default, goes unsaid).
func meshAddrCell(h api.Host) string {
	if h.MeshMode == "tun" && h.MeshAddr != "" {
		return h.MeshAddr + " (tun)"
	}
	return dash(h.MeshAddr)
}

// renderRTT prints the round-trip times in ms, from the row's host to the
// column's. Hosts not up are left out: the times they last published are
// stale, and their peers stop measuring them.
func renderRTT(w io.Writer, hosts []api.Host) {
	var up []api.Host
	measured := false
	for _, h := range hosts {
		if h.Status == api.HostUp {
			up = append(up, h)
			measured = measured || len(h.RTT) > 0
		}
	}
	if !measured {
		fmt.Fprintln(w, "No round-trip times measured yet: hosts measure each other over the mesh every few seconds once they have joined it.")
		return
	}
	fmt.Fprintln(w, "Round-trip time over the mesh in ms (from row to column; - not measured):")
	labels := hostLabels(up)
	header := []string{""}
	for _, h := range up {
		header = append(header, labels[h.ID])
	}
	rows := [][]string{header}
	for _, from := range up {
		row := []string{labels[from.ID]}
		for _, to := range up {
			ms, ok := from.RTT[to.ID]
			if !ok || from.ID == to.ID {
				row = append(row, "-")
				continue
			}
			row = append(row, formatMs(ms))
		}
		rows = append(rows, row)
	}
	writeRightAligned(w, rows)
}

// hostRegion is the host's region column: the control plane's record
// says what it is, as it may have no region.
func hostRegion(h api.Host) string {
	switch {
	case h.Role == api.HostRoleControl && h.Region == "":
		return "control"
	case h.Role == api.HostRoleControl:
		return h.Region + " (control)"
	}
	return dash(h.Region)
}

// hostLabels names each host in the matrix by its region, which is what a
// reader looks for, or by its id when hosts share a region.
func hostLabels(hosts []api.Host) map[string]string {
	count := map[string]int{}
	for _, h := range hosts {
		count[hostRegion(h)]++
	}
	labels := map[string]string{}
	for _, h := range hosts {
		labels[h.ID] = hostRegion(h)
		if count[labels[h.ID]] > 1 {
			labels[h.ID] = h.ID
		}
	}
	return labels
}

// formatMs keeps two significant figures or so: 0.42, 3.1, 87, 241.
func formatMs(ms float64) string {
	switch {
	case ms < 1:
		return strconv.FormatFloat(ms, 'f', 2, 64)
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64)
	}
	return strconv.FormatFloat(ms, 'f', 0, 64)
}

// writeRightAligned prints rows with the first column left-aligned and the
// others, numbers, right-aligned.
func writeRightAligned(w io.Writer, rows [][]string) {
	widths := map[int]int{}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-len(c))
			if i == 0 {
				b.WriteString(c + pad)
				continue
			}
			b.WriteString("  " + pad + c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// imageDisk is what the host's image store holds, against its cap:
// "1.2 GB / 10 GB (3 images, 14 layers)".
func imageDisk(d *api.HostDisk) string {
	if d == nil {
		return "-"
	}
	s := formatBytes(d.ImageBytes)
	if d.ImageMaxBytes > 0 {
		s += " / " + formatBytes(d.ImageMaxBytes)
	}
	return fmt.Sprintf("%s (%s, %s)", s, plural(d.Images, "image"), plural(d.Layers, "layer"))
}

func diskFree(d *api.HostDisk) string {
	if d == nil || d.TotalBytes == 0 {
		return "-"
	}
	return fmt.Sprintf("%s of %s", formatBytes(d.FreeBytes), formatBytes(d.TotalBytes))
}

// formatBytes writes n in decimal units, as disks are sold: 512 B, 3.4 MB,
// 12 GB.
func formatBytes(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB"}
	f, i := float64(n), 0
	for f >= 1000 && i < len(units)-1 {
		f /= 1000
		i++
	}
	if i == 0 || f >= 10 {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// bgpNotes are a host's BGP sessions and announcements, under its row.
func bgpNotes(b *api.HostBGP) []string {
	if b == nil {
		return nil
	}
	var out []string
	for _, s := range b.Sessions {
		out = append(out, fmt.Sprintf("  BGP peer %s AS%d: %s", s.Peer, s.ASN, s.State))
	}
	if len(b.Sessions) == 0 {
		out = append(out, "  BGP: no peer")
	}
	if len(b.Announced) == 0 {
		out = append(out, "  announcing nothing")
	} else {
		out = append(out, "  announcing "+strings.Join(b.Announced, ", "))
	}
	return out
}
