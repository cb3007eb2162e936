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
			t := &table{header: []string{"CODE", "NAME", "HOSTS"}}
			for _, r := range shown {
				t.add([]string{r.Code, r.Name, strconv.Itoa(r.Hosts)})
			}
			t.write(w)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&all, "all", false, "also list regions without hosts")
	return cmd
}
