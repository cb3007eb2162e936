package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func newIPsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ips",
		Short: "Manage an app's anycast addresses",
		Long: "An app's public addresses come from the server's anycast pools (perch server\n" +
			"--anycast-v4, --anycast-v6) and are announced over BGP from every healthy region.\n" +
			"An app with public services gets a dedicated IPv6 and the shared IPv4 at its first\n" +
			"deploy; a dedicated IPv4 (raw TCP on any port) is allocated on request.",
	}
	cmd.AddCommand(newIPsListCmd(g), newIPsAllocateCmd(g, "allocate-v4"), newIPsAllocateCmd(g, "allocate-v6"), newIPsReleaseCmd(g))
	return cmd
}

func newIPsListCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the app's addresses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			ips, err := c.ListIPs(cmd.Context(), app)
			if err != nil {
				return fmt.Errorf("ips list: %w", err)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, ips)
			}
			if len(ips) == 0 {
				fmt.Fprintf(w, "App %s has no anycast addresses.\n", app)
				return nil
			}
			t := &table{header: []string{"VERSION", "IP", "TYPE", "REGION", "ANNOUNCED BY", "CREATED AT"}}
			for _, ip := range ips {
				version, typ := "v4", "public (dedicated)"
				if strings.Contains(ip.IP, ":") {
					version = "v6"
				}
				if ip.Shared {
					typ = "public (shared)"
				}
				by := strings.Join(ip.Regions, ",")
				if by == "" {
					by = "-"
				}
				t.add([]string{version, ip.IP, typ, ip.Region, by, ip.CreatedAt.Format(time.RFC3339)})
			}
			t.write(w)
			if d := ips[0].Draining; len(d) > 0 {
				fmt.Fprintf(w, "Draining (announcing nothing; perch regions undrain R): %s\n", strings.Join(d, ", "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newIPsAllocateCmd(g *globals, use string) *cobra.Command {
	var shared bool
	cmd := &cobra.Command{
		Use:  use,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			typ := "v6"
			if use == "allocate-v4" {
				typ = "v4"
				if shared {
					typ = "shared_v4"
				}
			}
			ip, err := c.AssignIP(cmd.Context(), app, typ)
			if err != nil {
				return fmt.Errorf("ips %s: %w", use, err)
			}
			kind := "dedicated"
			if ip.Shared {
				kind = "shared"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Allocated %s address %s to app %s; every healthy region announces it.\n", kind, ip.IP, app)
			return nil
		},
	}
	if use == "allocate-v4" {
		cmd.Short = "Allocate a dedicated IPv4 address (or the shared one with --shared)"
		cmd.Flags().BoolVar(&shared, "shared", false, "the shared IPv4 address (HTTP and TLS only, routed by Host and SNI) instead of a dedicated one")
	} else {
		cmd.Short = "Allocate a dedicated IPv6 address"
	}
	return cmd
}

func newIPsReleaseCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "release ADDRESS",
		Short: "Give an address back to the pool",
		Long: "Gives ADDRESS back to the pool. An address the app's machines with public\n" +
			"services still answer on is kept unless --force (its clients lose the app).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			app, c, err := g.appClient()
			if err != nil {
				return err
			}
			if err := c.ReleaseIP(cmd.Context(), app, args[0], force); err != nil {
				return fmt.Errorf("ips release: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Released %s from app %s.\n", args[0], app)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "release an address the app still serves on")
	return cmd
}
