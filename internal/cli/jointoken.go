package cli

import (
	"fmt"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

// newJoinTokenCmd is `perch hosts join-token create`: a single-use token
// a new host's agent spends at its first start (docs/servers.md).
func newJoinTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "join-token", Short: "Make join tokens for new hosts", Args: cobra.NoArgs}
	var region, expiry string
	var asJSON bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Make a single-use join token for one host of a region",
		Long: "Make a single-use join token for one host of a region. Start the host's agent once with\n" +
			"--join-token (or $PERCH_JOIN_TOKEN); it exchanges the token for its own credential, kept in\n" +
			"its state dir, and the token is spent.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			jt, err := c.CreateJoinToken(cmd.Context(), api.JoinTokenRequest{Region: region, Expiry: expiry})
			if err != nil {
				return fmt.Errorf("hosts join-token create: %w", err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), jt)
			}
			fmt.Fprintln(cmd.OutOrStdout(), jt.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "One host of %s may join with it until %s:\n  PERCH_JOIN_TOKEN=<token> perch agent --region %s --server URL\n",
				jt.Region, jt.ExpiresAt.Local().Format(time.RFC1123), jt.Region)
			return nil
		},
	}
	create.Flags().StringVar(&region, "region", "", "region of the host that joins with it (required)")
	create.Flags().StringVar(&expiry, "expiry", "1h", "how long the token may be used (1m to 720h)")
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = create.MarkFlagRequired("region")
	cmd.AddCommand(create)
	return cmd
}
