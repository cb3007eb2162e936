package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/perchhq/perch/internal/api"
	"github.com/perchhq/perch/internal/auth"
	"github.com/spf13/cobra"
)

// parseExpiry reads a lifetime: 30d, 12h, 90m, 1h30m.
func parseExpiry(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var d time.Duration
	var err error
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		days, err = strconv.Atoi(n)
		d = time.Duration(days) * 24 * time.Hour
	} else {
		d, err = time.ParseDuration(s)
	}
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--expiry %q is not a positive duration: use e.g. 30d, 12h or 90m", s)
	}
	return d, nil
}

// orgOf is the organisation a command acts on: --org, else the token's own.
func orgOf(ctx context.Context, c *api.Client, flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	w, err := c.Whoami(ctx)
	if err != nil {
		return "", err
	}
	if w.Org == "" {
		return "", fmt.Errorf("this %s token belongs to no organisation: pass --org ORG", w.Kind)
	}
	return w.Org, nil
}

func newTokensCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tokens",
		Short: "Make, list, narrow and revoke an organisation's API tokens",
	}
	cmd.AddCommand(newTokensCreateCmd(g), newTokensListCmd(g), newTokensRevokeCmd(g), newTokensAttenuateCmd(g))
	return cmd
}

func newTokensCreateCmd(g *globals) *cobra.Command {
	var org, name, expiry string
	cmd := &cobra.Command{
		Use:   "create org|deploy|readonly",
		Short: "Make a token: org (the whole organisation), deploy (one app: --app), readonly",
		Long: `Make a root token of the organisation and print it once.

  org       does all a member does in the organisation
  deploy    reaches one app (--app, default the app of perch.toml)
  readonly  reads every app of the organisation, writes nothing

A token can be narrowed further, offline, with perch tokens attenuate.`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{auth.TokenOrg, auth.TokenDeploy, auth.TokenReadOnly},
		RunE: func(cmd *cobra.Command, args []string) error {
			kind := args[0]
			req := api.CreateTokenRequest{Kind: kind, Name: name}
			switch kind {
			case auth.TokenOrg, auth.TokenReadOnly:
				if g.app != "" {
					return fmt.Errorf("a %s token is for the whole organisation; --app is for deploy tokens", kind)
				}
			case auth.TokenDeploy:
				app, err := g.appName()
				if err != nil {
					return fmt.Errorf("a deploy token is for one app: %w", err)
				}
				req.App = app
			default:
				return fmt.Errorf("token kind %q: use org, deploy (with --app) or readonly", kind)
			}
			d, err := parseExpiry(expiry)
			if err != nil {
				return err
			}
			req.ExpiresIn = int64(d / time.Second)
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if org, err = orgOf(ctx, c, org); err != nil {
				return err
			}
			t, err := c.CreateToken(ctx, org, req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintln(w, t.Secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "Token %s (%s) of %s; it is shown only now. Revoke it with: perch tokens revoke %s\n", t.ID, describeToken(t.Token), org, t.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "organisation (default: your token's)")
	cmd.Flags().StringVar(&name, "name", "", "a name to recognise the token by in perch tokens list")
	cmd.Flags().StringVar(&expiry, "expiry", "", "lifetime, e.g. 30d, 12h (default: none)")
	return cmd
}

func describeToken(t api.Token) string {
	s := t.Kind
	if t.App != "" {
		s += " " + t.App
	}
	if t.Member != "" {
		s += " for " + t.Member
	}
	if !t.Expires.IsZero() {
		s += ", expires " + t.Expires.Format(time.RFC3339)
	}
	return s
}

func newTokensListCmd(g *globals) *cobra.Command {
	var org string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the organisation's tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if org, err = orgOf(ctx, c, org); err != nil {
				return err
			}
			ts, err := c.ListTokens(ctx, org)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), ts)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tAPP\tNAME\tEXPIRES\tCREATED")
			for _, t := range ts {
				exp := "-"
				if !t.Expires.IsZero() {
					exp = t.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, dash(t.App), dash(t.Name), exp, t.CreatedAt.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "organisation (default: your token's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newTokensRevokeCmd(g *globals) *cobra.Command {
	var org string
	cmd := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token and every token narrowed from it, at once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if org, err = orgOf(ctx, c, org); err != nil {
				return err
			}
			if err := c.RevokeToken(ctx, org, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Revoked token %s of %s\n", args[0], org)
			return nil
		},
	}
	cmd.Flags().StringVar(&org, "org", "", "organisation (default: your token's)")
	return cmd
}

func newTokensAttenuateCmd(g *globals) *cobra.Command {
	var from, expiry, region string
	var readonly bool
	cmd := &cobra.Command{
		Use:   "attenuate [--from TOKEN|-] [--app A] [--readonly] [--expiry 1h] [--region R]",
		Short: "Narrow a token offline: one app, read-only, an expiry, one region",
		Long: `Print a narrower copy of a token. It needs no server: the caveats are
added to the token itself, and the server checks every one. The narrowed
token can do no more than the one it came from, and is revoked with it.

The token is --from TOKEN, or --from - to read it from stdin, else the
token you are logged in with.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			tok := from
			switch from {
			case "-":
				line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return fmt.Errorf("read the token from stdin: %w", err)
				}
				tok = strings.TrimSpace(line)
			case "":
				creds, err := currentCredentials()
				if err != nil {
					return err
				}
				tok = creds.Token
			}
			if !auth.IsMacaroon(tok) {
				return fmt.Errorf("that token cannot be narrowed: only organisation tokens (%s...) can; the admin token cannot", auth.Prefix)
			}
			var cav []string
			if g.app != "" {
				cav = append(cav, auth.AppCaveat(g.app))
			}
			if readonly {
				cav = append(cav, auth.ReadOnlyCaveat)
			}
			if expiry != "" {
				d, err := parseExpiry(expiry)
				if err != nil {
					return err
				}
				cav = append(cav, auth.ExpiresCaveat(time.Now().Add(d)))
			}
			if region != "" {
				cav = append(cav, auth.RegionCaveat(region))
			}
			if len(cav) == 0 {
				return errors.New("nothing to narrow: pass --app, --readonly, --expiry or --region")
			}
			out, err := auth.Attenuate(tok, cav...)
			if err != nil {
				return err
			}
			_, r, err := auth.Inspect(out)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out)
			fmt.Fprintf(cmd.ErrOrStderr(), "Narrowed to: %s\n", strings.Join(r.Caveats(), ", "))
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the token to narrow, or - for stdin (default: your login's)")
	cmd.Flags().BoolVar(&readonly, "readonly", false, "reads only (GET)")
	cmd.Flags().StringVar(&expiry, "expiry", "", "lifetime from now, e.g. 1h, 7d")
	cmd.Flags().StringVar(&region, "region", "", "act only on machines of this region")
	return cmd
}

func newOrgsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "orgs",
		Short: "Organisations and their members",
	}
	create := &cobra.Command{
		Use:   "create SLUG",
		Short: "Create an organisation (admin token)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			o, err := c.CreateOrg(cmd.Context(), api.CreateOrgRequest{Slug: args[0]})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Created organisation %s; add members with: perch orgs invite EMAIL --org %s\n", o.Slug, o.Slug)
			return nil
		},
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List organisations and their members (yours; all of them with the admin token)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			orgs, err := c.ListOrgs(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), orgs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ORG\tMEMBERS")
			for _, o := range orgs {
				var ms []string
				for _, m := range o.Members {
					ms = append(ms, m.Name)
				}
				fmt.Fprintf(tw, "%s\t%s\n", o.Slug, dash(strings.Join(ms, ", ")))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	var inviteOrg, expiry string
	invite := &cobra.Command{
		Use:   "invite MEMBER",
		Short: "Add a member (e-mail or name) and print a token for them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := parseExpiry(expiry)
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			org, err := orgOf(ctx, c, inviteOrg)
			if err != nil {
				return err
			}
			t, err := c.InviteMember(ctx, org, api.InviteRequest{Member: args[0], ExpiresIn: int64(d / time.Second)})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "Added %s to %s. Give them the token above (shown only now); they log in with: perch auth login --api %s --token TOKEN\n", args[0], org, c.BaseURL())
			return nil
		},
	}
	invite.Flags().StringVar(&inviteOrg, "org", "", "organisation (default: your token's)")
	invite.Flags().StringVar(&expiry, "expiry", "", "the member token's lifetime, e.g. 90d (default: none)")
	var removeOrg string
	remove := &cobra.Command{
		Use:   "remove MEMBER",
		Short: "Remove a member and revoke their tokens",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			org, err := orgOf(ctx, c, removeOrg)
			if err != nil {
				return err
			}
			if err := c.RemoveMember(ctx, org, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed %s from %s and revoked their tokens\n", args[0], org)
			return nil
		},
	}
	remove.Flags().StringVar(&removeOrg, "org", "", "organisation (default: your token's)")
	cmd.AddCommand(create, list, invite, remove)
	return cmd
}
