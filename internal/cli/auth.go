package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/perchhq/perch/internal/api"
	"github.com/spf13/cobra"
)

func newAuthCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Log in to a Perch control plane",
	}
	cmd.AddCommand(newLoginCmd(), newWhoamiCmd(), newTokenCmd())
	return cmd
}

func newLoginCmd() *cobra.Command {
	var apiURL, token, devDir string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Store the API URL and token (from flags or a dev world's world.json)",
		Long: `Store the API URL and token under the user's config directory.

With --api and --token, log in to that server. Otherwise read them from a dev
world's world.json: the directory given with --dev, else $PERCH_DEV_DIR, else
the default directory of ` + "`perch dev up`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			creds := credentials{APIURL: apiURL, Token: token}
			from := "flags"
			if devDir != "" || (apiURL == "" && token == "") {
				dir := devDir
				if dir == "" {
					var err error
					if dir, err = defaultDevDir(); err != nil {
						return err
					}
				}
				w, err := readDevWorld(dir)
				if err != nil {
					return err
				}
				creds = credentials{APIURL: w.apiURLs(), Token: w.Token}
				from = "dev world " + dir
			}
			if creds.APIURL == "" {
				return errors.New("auth login: --token given without --api; pass both")
			}
			if creds.Token == "" {
				return errors.New("auth login: --api given without --token; pass both (`perch server` printed where it wrote the admin token)")
			}
			if err := verifyLogin(cmd.Context(), creds); err != nil {
				return err
			}
			path, err := credentialsPath()
			if err != nil {
				return err
			}
			if err := saveCredentials(path, creds); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Logged in to %s (from %s); saved to %s\n", creds.APIURL, from, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&apiURL, "api", "", "control plane URL, e.g. http://127.0.0.1:4280")
	cmd.Flags().StringVar(&token, "token", "", "API token")
	cmd.Flags().StringVar(&devDir, "dev", "", "read the URL and token from DIR/world.json of `perch dev up`")
	return cmd
}

// verifyLogin checks the token with a harmless call, so a typo is caught at
// login rather than at the first deploy.
func verifyLogin(ctx context.Context, c credentials) error {
	_, err := api.NewClient(c.APIURL, c.Token).ListApps(ctx)
	if api.IsUnauthorized(err) {
		return fmt.Errorf("the server at %s rejected the token: %w; check the token you passed", c.APIURL, err)
	}
	if err != nil {
		return fmt.Errorf("checking the login: %w", err)
	}
	return nil
}

func newWhoamiCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show which control plane the CLI talks to, and check the token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := currentCredentials()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "API: %s\n", c.APIURL)
			if os.Getenv(envAPIURL) != "" || os.Getenv(envAPIToken) != "" {
				fmt.Fprintln(w, "(PERCH_API_URL / PERCH_API_TOKEN override the stored login)")
			}
			if err := verifyLogin(cmd.Context(), c); err != nil {
				return err
			}
			who, err := api.NewClient(c.APIURL, c.Token).Whoami(cmd.Context())
			if err != nil {
				return fmt.Errorf("checking the login: %w", err)
			}
			switch {
			case who.Org != "":
				fmt.Fprintf(w, "Token: valid, %s of organisation %s (token %s)\n", who.Name, who.Org, who.TokenID)
			default:
				fmt.Fprintf(w, "Token: valid, %s\n", who.Kind)
			}
			if len(who.Caveats) > 0 {
				fmt.Fprintf(w, "Narrowed to: %s\n", strings.Join(who.Caveats, ", "))
			}
			return nil
		},
	}
}

func newTokenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "token",
		Short: "Print the API token (for scripts and registry logins)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := currentCredentials()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), c.Token)
			return nil
		},
	}
}
