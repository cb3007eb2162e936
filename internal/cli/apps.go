package cli

import (
	"fmt"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newAppsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apps",
		Short: "List and destroy apps",
	}
	cmd.AddCommand(newAppsListCmd(g), newAppsDestroyCmd(g))
	return cmd
}

func newAppsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List apps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			apps, err := c.ListApps(cmd.Context())
			if err != nil {
				return fmt.Errorf("apps list: %w", err)
			}
			if apps == nil {
				apps = []api.App{}
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, apps)
			}
			if len(apps) == 0 {
				fmt.Fprintln(w, "No apps. Create one with `perch launch --image REF`.")
				return nil
			}
			t := &table{header: []string{"NAME", "ORG", "AGE"}}
			now := time.Now()
			for _, a := range apps {
				org := a.Org
				if org == "" {
					org = "-"
				}
				t.add([]string{a.Name, org, formatAge(now.Sub(a.CreatedAt))})
			}
			t.write(w)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newAppsDestroyCmd(g *globals) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "destroy NAME",
		Short: "Destroy an app and all its machines",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !yes {
				prompt := fmt.Sprintf("This destroys app %s and all its machines.", name)
				if err := confirm(cmd, prompt, name); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			if err := c.DestroyApp(cmd.Context(), name); err != nil {
				return fmt.Errorf("apps destroy: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Destroyed app %s\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}
