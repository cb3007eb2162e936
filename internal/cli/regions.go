package cli

import (
	"fmt"
	"strconv"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newRegionsCmd(g *globals) *cobra.Command {
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "regions",
		Short: "List the regions machines can run in (those with hosts; --all for every known one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			regions, err := c.ListRegions(cmd.Context())
			if err != nil {
				return fmt.Errorf("regions: %w", err)
			}
			shown := []api.Region{}
			for _, r := range regions {
				if all || r.Hosts > 0 {
					shown = append(shown, r)
				}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, shown)
			}
			if len(shown) == 0 {
				fmt.Fprintln(w, "No region has a host yet: start an agent with `perch agent --region CODE`.")
				return nil
			}
			t := &table{header: []string{"CODE", "NAME", "HOSTS", "ANYCAST"}}
			for _, r := range shown {
				state := "announced"
				if r.Draining {
					state = "draining"
				}
				t.add([]string{r.Code, r.Name, strconv.Itoa(r.Hosts), state})
			}
			t.write(w)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&all, "all", false, "also list regions without hosts")
	cmd.AddCommand(newRegionDrainCmd(g, true), newRegionDrainCmd(g, false))
	return cmd
}

// newRegionDrainCmd is perch regions drain R (drain) or undrain R: the
// region's hosts withdraw their anycast routes (and keep serving what
// still arrives), or announce them again. Admin token.
func newRegionDrainCmd(g *globals, drain bool) *cobra.Command {
	use, short := "undrain REGION", "Have a drained region's hosts announce their anycast addresses again"
	if drain {
		use, short = "drain REGION", "Withdraw a region's anycast announcements: its clients move to the next nearest region, and its hosts keep serving what still arrives (docs/anycast.md)"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if drain {
				if _, err := c.DrainRegion(cmd.Context(), args[0]); err != nil {
					return fmt.Errorf("regions drain %s: %w", args[0], err)
				}
				fmt.Fprintf(w, "Region %s drained: its hosts withdraw their anycast routes and hand moved connections back; undo with perch regions undrain %s\n", args[0], args[0])
				return nil
			}
			if _, err := c.UndrainRegion(cmd.Context(), args[0]); err != nil {
				return fmt.Errorf("regions undrain %s: %w", args[0], err)
			}
			fmt.Fprintf(w, "Region %s undrained: its hosts announce their anycast addresses again\n", args[0])
			return nil
		},
	}
}
