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

// newHostRemoveCmd is `perch hosts remove HOST` (the operator's token):
// the host's credential is revoked and its connections to NATS closed at
// once; its machines are lost with it.
func newHostRemoveCmd(g *globals) *cobra.Command {
	var asJSON, yes bool
	cmd := &cobra.Command{
		Use:   "remove HOST",
		Short: "Remove a host: revoke its credential, cut its connections; its machines are lost",
		Long: "Remove a host: its credential is revoked and its NATS connections are closed at once, and it\n" +
			"leaves the scheduler, the edges and the mesh. Its machines stay listed with host_status\n" +
			"unreachable, as on a dead host; destroy them (perch machine destroy) or deploy again to\n" +
			"replace them. A host removed joins again only with a new join token and an empty state dir.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				prompt := fmt.Sprintf("This removes host %s for good: its credential is revoked and its machines are lost.", args[0])
				if err := confirm(cmd, prompt, args[0]); err != nil {
					return err
				}
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.RemoveHost(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("hosts remove %s: %w", args[0], err)
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), out)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Host %s removed: its credential is revoked and its connections closed.\n", out.ID)
			if len(out.LostMachines) > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%d machines were on it and are lost (host_status unreachable): %v\n", len(out.LostMachines), out.LostMachines)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return cmd
}
